"""Exports load where training reads them (datasets, pyarrow; verl when installed) and splits never separate
near-duplicates."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import datasets
import pyarrow.parquet as pq
import pytest

from data_tools.build import BuildSpec, build
from data_tools.exports import assign_splits, export
from data_tools.store import Dataset
from reward_servers.extract import extract_code
from tests.data_tools.conftest import run_data_cli


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, renderer):
    """14 items (one per family) plus, per shapes item, a near-duplicate: same picture, reformatted code."""
    root = tmp_path_factory.mktemp("exports") / "ds"
    build(BuildSpec(["all"], 14, seed=1, shard_size=14), root, progress=False, renderer=renderer)
    ds = Dataset(root)
    dups = []
    for it in ds.load_items():
        if it.family in ("shapes", "bars"):
            code = "# the same figure, written differently\n" + it.code.replace(", ", ",  ")
            dups.append(
                dataclasses.replace(it, id=it.id + "-dup", image=f"images/{it.id}-dup.png", code=code)
            )
    ds.write_shard(
        1, dups, {d.id: ds.image_path(d.id[: -len("-dup")]).read_bytes() for d in dups}, {"planned": 0}
    )
    return root


def test_cli_export_writes_every_format(dataset_dir):
    proc = run_data_cli("export", str(dataset_dir), "--val", "0.25", "--test", "0.25", "--seed", "7")
    assert proc.returncode == 0, proc.stderr[-2000:]
    splits = json.loads((dataset_dir / "exports" / "splits.json").read_text())
    assert len(splits) == 16 and set(splits.values()) == {"train", "validation", "test"}
    for item_id, split in splits.items():
        if item_id.endswith("-dup"):
            assert splits[item_id[: -len("-dup")]] == split, "a near-duplicate pair was split apart"


def test_r1_parquet_is_verl_rl_format(dataset_dir):
    export(dataset_dir, ["r1"], val_fraction=0.25, test_fraction=0.25)
    ds = Dataset(dataset_dir)
    by_id = {it.id: it for it in ds.load_items()}
    rows = []
    for split in ("train", "validation", "test"):
        table = pq.read_table(dataset_dir / "exports" / "r1" / f"{split}.parquet")
        assert table.column_names == [
            "data_source",
            "prompt",
            "images",
            "ability",
            "reward_model",
            "extra_info",
        ]
        loaded = datasets.load_dataset(
            "parquet", data_files=str(dataset_dir / "exports/r1" / f"{split}.parquet")
        )
        rows += list(loaded["train"])
    assert len(rows) == 16
    for row in rows:
        item = by_id[row["extra_info"]["item_id"]]
        assert row["data_source"] == f"codepercept/{item.family}"
        assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].count("<image>") == 1
        assert len(row["images"]) == 1 and row["images"][0]["bytes"] == ds.image_path(item).read_bytes()
        assert row["reward_model"] == {"style": "rule", "ground_truth": item.code}
        assert row["extra_info"]["family"] == item.family and row["extra_info"]["target_id"] == item.id
        assert row["extra_info"]["split"] in ("train", "validation", "test")


def test_s1_jsonl_records(dataset_dir):
    export(dataset_dir, ["s1"], val_fraction=0.25, test_fraction=0.25)
    by_id = {it.id: it for it in Dataset(dataset_dir).load_items()}
    records = [
        json.loads(line)
        for split in ("train", "validation", "test")
        for line in (dataset_dir / "exports" / "s1" / f"{split}.jsonl").open()
    ]
    assert len(records) == 32 and {r["task"] for r in records} == {"caption", "code"}
    for r in records:
        item_id = r["id"].rsplit("-", 1)[0]
        item = by_id[item_id]
        assert (dataset_dir / "exports" / "s1" / r["images"][0]).is_file()
        user, assistant = r["messages"]
        assert user["role"] == "user" and user["content"].startswith("<image>")
        if r["task"] == "code":
            assert (
                assistant["content"].startswith("```python\n")
                and extract_code(assistant["content"]).strip() == item.code.strip()
            )
        else:
            assert assistant["content"] == item.caption


def test_hf_dataset_loads_with_image_feature(dataset_dir):
    export(dataset_dir, ["hf"], val_fraction=0.25, test_fraction=0.25)
    dd = datasets.load_from_disk(str(dataset_dir / "exports" / "hf"))
    assert set(dd) == {"train", "validation", "test"} and sum(len(d) for d in dd.values()) == 16
    assert isinstance(dd["train"].features["image"], datasets.Image)
    row = dd["train"][0]
    assert row["image"].size[0] >= 200 and row["code"] and json.loads(row["params"]) is not None


def test_an_rl_split_keeps_r1_prompts_out_of_s1_training(dataset_dir):
    proc = run_data_cli("export", str(dataset_dir), "--formats", "r1,s1", "--val", "0.125", "--test", "0.125",
                        "--rl", "0.25", "--seed", "3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    exports = dataset_dir / "exports"
    splits = json.loads((exports / "splits.json").read_text())
    assert set(splits.values()) == {"train", "validation", "test", "rl"}
    rl = {k for k, v in splits.items() if v == "rl"}
    assert len(rl) >= 4  # round(0.25 * 16), or more where a near-duplicate group overshoots
    assert "rl=" in proc.stdout
    for item_id, split in splits.items():
        if item_id.endswith("-dup"):
            assert splits[item_id[: -len("-dup")]] == split, "a near-duplicate pair was split apart"
    r1_rl = pq.read_table(exports / "r1" / "rl.parquet").to_pylist()
    assert {r["extra_info"]["item_id"] for r in r1_rl} == rl
    assert {r["extra_info"]["split"] for r in r1_rl} == {"rl"}
    s1_train = {json.loads(line)["id"].rsplit("-", 1)[0] for line in (exports / "s1" / "train.jsonl").open()}
    r1_train = {
        r["extra_info"]["item_id"] for r in pq.read_table(exports / "r1" / "train.parquet").to_pylist()
    }
    train = {k for k, v in splits.items() if v == "train"}
    assert s1_train == r1_train == train and not rl & train

    # Exported again without it: no rl file is left behind to be read as this export's.
    export(dataset_dir, ["r1", "s1"], seed=3, val_fraction=0.125, test_fraction=0.125)
    assert not (exports / "r1" / "rl.parquet").exists() and not (exports / "s1" / "rl.jsonl").exists()
    assert "rl" not in set(json.loads((exports / "splits.json").read_text()).values())
    with pytest.raises(ValueError, match="together below 1"):
        assign_splits([], [], val_fraction=0.4, test_fraction=0.3, rl_fraction=0.3)


def test_splits_are_deterministic_and_seed_dependent(dataset_dir):
    ds = Dataset(dataset_dir)
    items = ds.load_items()
    pngs = [ds.image_path(it).read_bytes() for it in items]
    a = assign_splits(items, pngs, seed=1, val_fraction=0.2, test_fraction=0.2)
    assert a == assign_splits(items, pngs, seed=1, val_fraction=0.2, test_fraction=0.2)
    assert any(
        a != assign_splits(items, pngs, seed=s, val_fraction=0.2, test_fraction=0.2) for s in range(2, 6)
    )


@pytest.mark.verl
@pytest.mark.skipif(
    importlib.util.find_spec("verl") is None, reason="verl extra not installed (pip install verl)"
)
def test_r1_parquet_loads_in_verl_rlhf_dataset(dataset_dir):
    """verl's RLHFDataset reads the parquet and turns the <image> placeholder into our decoded PNG.

    An offline tiny Qwen2.5-VL processor stands in for a hub one. verl's overlong-prompt filter is off: it
    calls qwen_vl_utils, which needs torchvision (absent from CPU installs here).
    """
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from codepercept_rl.models.processor import make_processor
    from codepercept_rl.models.spec import get_spec
    from codepercept_rl.models.tokenizer import build_tokenizer

    export(dataset_dir, ["r1"], val_fraction=0.25, test_fraction=0.25)
    spec = get_spec("nano")
    tokenizer = build_tokenizer(spec.vocab_size, model_max_length=spec.max_position_embeddings)
    config = OmegaConf.create(
        {"prompt_key": "prompt", "image_key": "images", "filter_overlong_prompts": False}
    )
    path = str(dataset_dir / "exports/r1/train.parquet")
    data = RLHFDataset([path], tokenizer, config, make_processor("qwen2_5_vl", spec, tokenizer))
    assert len(data) == pq.read_metadata(path).num_rows
    row = data[0]
    [message] = row["raw_prompt"]
    image, text = message["content"]
    assert image["type"] == "image" and image["image"].size[0] >= 200
    assert text["type"] == "text" and "matplotlib" in text["text"]
    assert row["reward_model"]["style"] == "rule" and row["extra_info"]["split"] == "train"
