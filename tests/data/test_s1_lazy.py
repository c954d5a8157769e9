"""S1Dataset indexes rows without touching their pixels and builds a row only when it is fetched."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from codepercept_rl.data import (
    S1Dataset,
    S1Example,
    collate,
    global_batches,
    mixture_order,
    rank_micro_batches,
)
from codepercept_rl.data.s1 import tokenize_conversation
from codepercept_rl.errors import UserError
from codepercept_rl.models.processor import Qwen2_5_VLImageOnlyProcessor
from codepercept_rl.models.tiny import build_tiny_model
from tests.learner.s1_rows import write_jsonl

BATCH_TENSORS = (
    "input_ids",
    "attention_mask",
    "loss_mask",
    "pixel_values",
    "image_grid_thw",
    "mm_token_type_ids",
)
CODE = "```python\nimport matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [1, 2])\n```"


class CountingProcessor(Qwen2_5_VLImageOnlyProcessor):
    """The real processor, counting the calls that process images."""

    image_calls = 0

    def __call__(self, images: Any = None, text: Any = None, **kwargs: Any) -> Any:
        if images is not None:
            self.image_calls += 1
        return super().__call__(images=images, text=text, **kwargs)


@pytest.fixture(scope="module")
def base():
    torch.set_num_threads(1)
    return build_tiny_model("qwen2_5_vl", "nano")[1]


def counting(base) -> CountingProcessor:
    return CountingProcessor(
        image_processor=base.image_processor, tokenizer=base.tokenizer, chat_template=base.chat_template
    )


def conversation(row_id: str, task: str, images: list[str], prompt: str, answer: str) -> dict:
    messages = [
        {"role": "user", "content": "<image>" * len(images) + prompt},
        {"role": "assistant", "content": answer},
    ]
    return {"id": row_id, "task": task, "images": images, "messages": messages}


def noise_png(path: Path, size: tuple[int, int], seed: int) -> None:
    rng = random.Random(seed)
    Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3))).save(path)


def rows_with_varied_images(folder: Path) -> list[dict]:
    """12 rows: images of different sizes (so different token counts), one with two images, one with none."""
    sizes = [(64, 64), (100, 50), (30, 200), (128, 96), (56, 56), (90, 140)]
    for k, size in enumerate(sizes):
        noise_png(folder / f"{k}.png", size, seed=k)
    rows = []
    for i in range(10):
        task, answer = (
            ("code", CODE) if i % 2 else ("caption", "Two bars, " + "the second taller, " * (i % 4))
        )
        rows.append(conversation(f"r{i}", task, [f"{i % len(sizes)}.png"], "Draw this.", answer))
    rows.append(
        conversation("two-images", "caption", ["1.png", "2.png"], "Compare them.", "The left is wider.")
    )
    rows.append(conversation("text-only", "code", [], "Write code for two bars.", CODE))
    return rows


def eager(processor, folder: Path, row: dict) -> S1Example:
    """What building every row up front gives: the images decoded and processed, the conversation tokenized."""
    images = [Image.open(folder / p).convert("RGB") for p in row["images"]]
    return S1Example(row["id"], row["task"], *tokenize_conversation(processor, row["messages"], images),
                     row["messages"], images)  # fmt: skip


def held_tensors(obj: Any, seen: set[int] | None = None) -> int:
    """Tensors and PIL images reachable from ``obj``'s attributes and containers (the processor aside)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, (torch.Tensor, Image.Image)):
        return 1
    if isinstance(obj, dict):
        return sum(held_tensors(k, seen) + held_tensors(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set)):
        return sum(held_tensors(v, seen) for v in obj)
    if isinstance(obj, S1Dataset):
        return sum(held_tensors(v, seen) for k, v in vars(obj).items() if k != "processor")
    return 0


def test_index_decodes_no_image_and_fetching_builds_only_the_rows_asked_for(base, tmp_path: Path) -> None:
    rows = rows_with_varied_images(tmp_path)
    processor = counting(base)
    ds = S1Dataset([write_jsonl(tmp_path / "s1.jsonl", rows)], processor, max_length=1024)
    assert len(ds) == len(rows) and not ds.skipped
    assert processor.image_calls == 0 and held_tensors(ds) == 0  # no pixel read, no tensor kept
    reference = [eager(base, tmp_path, r) for r in rows]
    # The index's lengths and target counts are the built rows' (group_by_length and the loss normaliser).
    assert list(ds.lengths) == [e.length for e in reference]
    assert list(ds.targets) == [int(e.loss_mask.sum()) for e in reference]
    assert len(set(ds.lengths)) > 5  # the image sizes really gave different token counts
    assert list(ds.n_images) == [len(r["images"]) for r in rows]

    # Rank 0 of 2 builds its micro-batches of the first global batch, and only those rows.
    batch = global_batches(mixture_order(ds.tasks, {}, seed=0, epoch=0), 8)[0]
    mine = rank_micro_batches(batch, ds.lengths, rank=0, world_size=2, micro_batch_size=2)
    pad, image = base.tokenizer.pad_token_id, base.image_token_id
    built = [collate([ds[i] for i in mb], pad, image) for mb in mine]
    fetched = {i for mb in mine for i in mb}
    assert processor.image_calls == sum(1 for i in fetched if rows[i]["images"]) < len(rows)
    for mb, got in zip(mine, built, strict=True):
        want = collate([reference[i] for i in mb], pad, image)
        for name in BATCH_TENSORS:
            a, b = getattr(got, name), getattr(want, name)
            assert (a is None and b is None) or torch.equal(a, b), name
    calls = processor.image_calls
    ds[next(iter(fetched))]
    assert processor.image_calls == calls  # fetched again: from the cache

    uncached = S1Dataset([tmp_path / "s1.jsonl"], processor, max_length=1024, cache_bytes=0)
    for _ in range(2):
        uncached[0]
    assert processor.image_calls == calls + 2 and held_tensors(uncached) == 0
    for i, want in enumerate(reference):  # every row equals its eager build
        got = ds[i]
        assert got.id == want.id and got.messages == want.messages, i
        for name in ("input_ids", "loss_mask", "pixel_values", "image_grid_thw"):
            a, b = getattr(got, name), getattr(want, name)
            assert (a is None and b is None) or torch.equal(a, b), (i, name)


def test_a_truncated_image_is_found_when_fetched_and_masked_or_refused(base, tmp_path: Path, caplog) -> None:
    noise_png(tmp_path / "good.png", (64, 64), seed=0)
    noise_png(tmp_path / "cut.png", (64, 64), seed=1)
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) * 3 // 5])  # header intact, pixel data cut short
    rows = [
        conversation("good", "code", ["good.png"], "Draw.", CODE),
        conversation("cut", "code", ["cut.png"], "Draw.", CODE),
    ]
    path = write_jsonl(tmp_path / "s1.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="codepercept_rl.data.s1"):
        ds = S1Dataset([path], base, max_length=1024)
        assert len(ds) == 2 and not ds.skipped  # its header reads: indexed like any row
        e = ds[1]
    assert e.length == ds.lengths[1] and e.loss_mask.sum() == 0  # same tokens, nothing to learn from it
    assert ds.masked == {1: "bad_image"} and ds[0].loss_mask.sum() == ds.targets[0]
    assert any(
        "s1.jsonl:2 (row 'cut')" in r.getMessage() and "masking" in r.getMessage() for r in caplog.records
    )
    strict = S1Dataset([path], base, max_length=1024, strict=True)
    with pytest.raises(
        UserError, match=r"bad S1 row at .*s1.jsonl:2 \(row 'cut'\): image .*cut.png does not decode"
    ):
        strict[1]


def test_a_row_edited_after_indexing_is_refused_by_name(base, tmp_path: Path) -> None:
    noise_png(tmp_path / "0.png", (64, 64), seed=0)
    path = write_jsonl(tmp_path / "s1.jsonl", [conversation("a", "code", ["0.png"], "Draw.", CODE)])
    ds = S1Dataset([path], base, max_length=1024)
    write_jsonl(path, [conversation("a", "code", ["0.png"], "Draw.", CODE + " and more")])
    with pytest.raises(UserError, match=r"S1 row at .*s1.jsonl:1 \(row 'a'\) changed since it was indexed"):
        ds[0]
