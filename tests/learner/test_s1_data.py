"""S1 dataset and batching: assistant-only loss masks, bad-row handling, task mixture, length grouping."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest
import torch

from codepercept_rl.data import (
    S1Dataset,
    collate,
    global_batches,
    mixture_order,
    padding_share,
    rank_micro_batches,
    render_prompt,
)
from codepercept_rl.errors import UserError
from codepercept_rl.models.tiny import build_tiny_model
from tests.learner.s1_rows import render_png, row, write_jsonl

CODE = "```python\nimport matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [1, 2])\n```"


@pytest.fixture(scope="module")
def processor():
    torch.set_num_threads(1)
    return build_tiny_model("qwen2_5_vl", "nano")[1]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for i in range(3):
        (tmp_path / "img" / f"{i}.png").write_bytes(render_png(1.0 + i))
    return tmp_path


def test_loss_mask_covers_exactly_the_assistant_reply(processor, folder: Path) -> None:
    path = write_jsonl(folder / "s1.jsonl", [row("r0", "code", "img/0.png", CODE)])
    ds = S1Dataset([path], processor, max_length=512)
    (e,) = ds.examples
    trained = e.input_ids[e.loss_mask.bool()]
    assert processor.tokenizer.decode(trained) == CODE + "<|im_end|>"
    # The untrained prefix is token for token the prompt the model gets at inference.
    prompt = render_prompt(processor, e.messages[:1])
    expected = processor(text=[prompt], images=e.images, return_tensors="pt")["input_ids"][0]
    first_target = int(e.loss_mask.nonzero()[0])
    assert torch.equal(e.input_ids[:first_target], expected)
    assert e.image_grid_thw.shape == (1, 3) and e.pixel_values.shape[0] == int(e.image_grid_thw.prod())


def test_multi_turn_conversation_trains_every_assistant_turn(processor, folder: Path) -> None:
    r = row("r0", "caption", "img/0.png", "Two bars.")
    r["messages"] += [{"role": "user", "content": "Which is taller?"}, {"role": "assistant", "content": "b"}]
    ds = S1Dataset([write_jsonl(folder / "s1.jsonl", [r])], processor, max_length=512)
    (e,) = ds.examples
    text = processor.tokenizer.decode(e.input_ids[e.loss_mask.bool()])
    assert text == "Two bars.<|im_end|>b<|im_end|>"


def test_bad_rows_are_skipped_counted_and_named(processor, folder: Path, caplog) -> None:
    (folder / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    rows = [
        row("good", "code", "img/0.png", CODE),
        row("no-file", "code", "img/missing.png", CODE),
        row("undecodable", "code", "img/broken.png", CODE),
        row("no-reply", "code", "img/1.png", None),
        row("too-long", "caption", "img/2.png", "word " * 600),
        "{not json",
        {**row("two-placeholders", "code", "img/0.png", CODE), "images": []},
    ]
    path = write_jsonl(folder / "s1.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="codepercept_rl.data.s1"):
        ds = S1Dataset([path], processor, max_length=256)
    assert [e.id for e in ds.examples] == ["good"]
    assert ds.skipped == Counter(
        missing_image=1, bad_image=1, no_assistant=1, too_long=1, not_json=1, image_count=1
    )
    for name in ("no-file", "undecodable", "no-reply", "too-long", "line 6", "two-placeholders"):
        assert any(name in rec.getMessage() for rec in caplog.records), name
    with pytest.raises(UserError, match=r"s1.jsonl:2 \(row 'no-file'\).*image not found"):
        S1Dataset([path], processor, max_length=256, strict=True)


def test_mixture_follows_the_ratio_and_is_reproducible() -> None:
    tasks = ["code"] * 30 + ["caption"] * 10
    order = mixture_order(tasks, {"code": 1.0, "caption": 1.0}, seed=3, epoch=0)
    counts = Counter(tasks[i] for i in order)
    assert counts == Counter(code=20, caption=20) and len(order) == 40
    assert len(set(i for i in order if tasks[i] == "caption")) == 10  # all captions, then repeats
    assert order == mixture_order(tasks, {"code": 1.0, "caption": 1.0}, seed=3, epoch=0)
    assert order != mixture_order(tasks, {"code": 1.0, "caption": 1.0}, seed=3, epoch=1)
    assert sorted(mixture_order(tasks, {}, seed=0, epoch=0)) == list(range(40))
    assert mixture_order(tasks, {}, seed=0, epoch=0, shuffle=False) == list(range(40))
    with pytest.raises(ValueError, match="no training row"):
        mixture_order(tasks, {"qa": 1.0}, seed=0, epoch=0)


def test_length_grouping_cuts_padding_and_keeps_the_batch() -> None:
    lengths = [10, 200, 12, 190, 11, 205, 9, 198]
    batch = list(range(8))
    grouped = [
        mb for r in range(2) for mb in rank_micro_batches(batch, lengths, r, 2, 2, group_by_length=True)
    ]
    plain = [
        mb for r in range(2) for mb in rank_micro_batches(batch, lengths, r, 2, 2, group_by_length=False)
    ]
    assert sorted(i for mb in grouped for i in mb) == batch == sorted(i for mb in plain for i in mb)
    pad_g, slots_g = padding_share(grouped, lengths)
    pad_p, slots_p = padding_share(plain, lengths)
    assert pad_g / slots_g < 0.05 < 0.4 < pad_p / slots_p
    assert global_batches(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="does not split"):
        rank_micro_batches([0, 1, 2], lengths, 0, 2, 1)


def test_collate_pads_right_and_keeps_images_in_order(processor, folder: Path) -> None:
    rows = [row("a", "code", "img/0.png", CODE), row("b", "caption", "img/1.png", "Bars.")]
    ds = S1Dataset([write_jsonl(folder / "s1.jsonl", rows)], processor, max_length=512)
    mb = collate(ds.examples, processor.tokenizer.pad_token_id, processor.image_token_id)
    short = min(range(2), key=lambda b: ds[b].length)
    n = ds[short].length
    assert (
        mb.attention_mask[short].sum() == n
        and (mb.input_ids[short, n:] == processor.tokenizer.pad_token_id).all()
    )
    assert mb.loss_mask[short, n:].sum() == 0
    assert torch.equal(mb.pixel_values, torch.cat([ds[0].pixel_values, ds[1].pixel_values]))
    assert int(mb.mm_token_type_ids.sum()) == int((mb.input_ids == processor.image_token_id).sum()) > 0
