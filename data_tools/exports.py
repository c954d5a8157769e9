"""Exports of a dataset directory for training: verl R1 parquet, S1 chat JSONL, a Hugging Face dataset.

    codepercept-rl data export DIR [--formats r1,s1,hf,verl_sft] [--seed 0] [--val 0.05 --test 0.05] [--rl 0.3]

Writes under ``DIR/exports/``:

* ``splits.json``: item id -> "train" | "validation" | "test" | "rl".
* ``r1/{split}.parquet``: verl's multimodal RL format, one row per item: ``data_source``
  ("codepercept/<family>"), ``prompt`` (chat list; the user turn holds an ``<image>`` placeholder), ``images``
  ([{"bytes": png}]), ``ability``, ``reward_model`` ({"style": "rule", "ground_truth": code}) and ``extra_info``
  ({split, index, item_id, family, source, target_id}). ``target_id`` is the item id, the name under which a
  reward server can have the image registered.
* ``s1/{split}.jsonl``: chat-messages SFT records (verl MultiTurnSFTDataset / ms-swift): per item one
  ``task: "caption"`` record (image -> code-grounded caption) and one ``task: "code"`` record (image -> code in a
  ```python block); ``images`` holds the PNG path relative to the JSONL file's folder (``../../images/<id>.png``), so the
  export loads from anywhere (verl / ms-swift resolve relative paths the same way when run from there).
* ``verl_sft/{split}.parquet`` (only when asked for): the S1 records for verl's SFT trainer
  (``MultiTurnSFTDataset`` reads parquet only): ``id``, ``task``, ``messages`` as in S1 and ``images``
  ([{"bytes": png}], embedded like R1's, so the file is self-contained).
* ``hf/``: ``datasets.DatasetDict.save_to_disk`` with an ``Image`` feature (load with ``load_from_disk``).

Every format writes one file per split that holds items. ``rl`` (only with ``rl_fraction`` > 0, ``--rl``) is a
training split of its own for R1: S1 trains on ``s1/train.jsonl``, R1 on ``r1/rl.parquet``, so R1's prompts
are images the S1 model never trained on. (A model trained for many epochs on its SFT items has all but
memorised their answers; GRPO on those items learns little about the images it has not seen.)

Splits do not leak near-duplicates: items are grouped (pHash within ``split_distance`` bits or identical
normalised code) and whole groups go to one split; the group order is shuffled with ``seed``, so splits are
deterministic. Each file is written to a temp path and renamed into place.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from codepercept_rl.utils.io import atomic_write_json, atomic_write_text
from data_tools.dedup import code_hash, image_phash, near_duplicate_groups
from data_tools.prompts import R1_PROMPT, S1_CAPTION_PROMPT, S1_CODE_PROMPT
from data_tools.store import Dataset, Item

SPLITS = ("train", "validation", "test", "rl")
FORMATS = ("r1", "s1", "hf", "verl_sft")
DEFAULT_FORMATS = ("r1", "s1", "hf")  # verl_sft embeds every image a second time: only on request
ABILITY = "stem_perception"
SPLIT_FILES = {
    "r1": "parquet",
    "s1": "jsonl",
    "verl_sft": "parquet",
}  # the formats written one file per split


def _split_file(out: Path, fmt: str, split: str) -> Path:
    """Where format ``fmt`` (one of ``SPLIT_FILES``) writes ``split`` under the exports folder ``out``."""
    return out / fmt / f"{split}.{SPLIT_FILES[fmt]}"


def assign_splits(
    items: Sequence[Item],
    pngs: Sequence[bytes],
    *,
    seed: int = 0,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_distance: int = 8,
    rl_fraction: float = 0.0,
) -> dict[str, str]:
    """Map item id -> split, keeping near-duplicate groups together.

    Groups are shuffled with ``seed``; test takes whole groups until it holds ``round(test_fraction * n)``
    items (at least one group when the fraction is > 0 and there are three groups or more), then validation
    likewise, then rl, and the rest is train. A big group can overshoot its split's target by its own size.
    """
    fractions = {"validation": val_fraction, "test": test_fraction, "rl": rl_fraction}
    if not all(0 <= f < 1 for f in fractions.values()) or sum(fractions.values()) >= 1:
        raise ValueError("bad split fractions: " + ", ".join(f"{k} {v}" for k, v in fractions.items())
                         + " (each in [0, 1), together below 1: train takes the rest)")  # fmt: skip
    groups = near_duplicate_groups(
        [image_phash(p) for p in pngs], [code_hash(i.code) for i in items], split_distance
    )
    random.Random(seed).shuffle(groups)

    def target(fraction: float) -> int:
        wanted = round(fraction * len(items))
        return max(wanted, 1) if fraction > 0 and len(groups) >= 3 else wanted

    order = ("test", "validation", "rl")
    targets = {k: target(fractions[k]) for k in order}
    filled = dict.fromkeys(order, 0)
    splits: dict[str, str] = {}
    for group in groups:
        name = next((k for k in order if filled[k] < targets[k]), "train")
        if name != "train":
            filled[name] += len(group)
        for j in group:
            splits[items[j].id] = name
    return splits


def r1_rows(items: Sequence[Item], pngs: Sequence[bytes], split: str) -> list[dict]:
    """verl RL rows (module docstring) for one split."""
    return [
        {
            "data_source": f"codepercept/{item.family}",
            "prompt": [{"role": "user", "content": R1_PROMPT}],
            "images": [{"bytes": png}],
            "ability": ABILITY,
            "reward_model": {"style": "rule", "ground_truth": item.code},
            "extra_info": {
                "split": split,
                "index": index,
                "item_id": item.id,
                "family": item.family,
                "source": item.source,
                "target_id": item.id,
            },
        }
        for index, (item, png) in enumerate(zip(items, pngs, strict=True))
    ]


def s1_records(items: Sequence[Item], image_prefix: str = "../../") -> list[dict]:
    """Two SFT chat records per item: image -> caption, image -> code.

    ``image_prefix`` turns an item's dataset-relative image path into one relative to the JSONL's folder.
    """
    out = []
    for item in items:
        image = f"{image_prefix}{item.image}"
        out.append(
            {
                "id": f"{item.id}-caption",
                "task": "caption",
                "images": [image],
                "messages": [
                    {"role": "user", "content": S1_CAPTION_PROMPT},
                    {"role": "assistant", "content": item.caption},
                ],
            }
        )
        out.append(
            {
                "id": f"{item.id}-code",
                "task": "code",
                "images": [image],
                "messages": [
                    {"role": "user", "content": S1_CODE_PROMPT},
                    {"role": "assistant", "content": f"```python\n{item.code.rstrip()}\n```"},
                ],
            }
        )
    return out


def verl_sft_rows(items: Sequence[Item], pngs: Sequence[bytes]) -> list[dict]:
    """The S1 records (``s1_records``) as verl SFT parquet rows, each with its image's PNG bytes."""
    return [
        {"id": r["id"], "task": r["task"], "messages": r["messages"], "images": [{"bytes": png}]}
        for item, png in zip(items, pngs, strict=True)
        for r in s1_records([item])
    ]


def _write_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_hf(path: Path, by_split: dict[str, tuple[list[Item], list[bytes]]]) -> None:
    import datasets  # heavy import: only when this export is asked for

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "code": datasets.Value("string"),
            "family": datasets.Value("string"),
            "source": datasets.Value("string"),
            "seed": datasets.Value("int64"),
            "params": datasets.Value("string"),  # JSON: parameters differ in shape between families
        }
    )
    dd = datasets.DatasetDict()
    for split, (items, pngs) in by_split.items():
        dd[split] = datasets.Dataset.from_dict(
            {
                "id": [i.id for i in items],
                "image": [{"bytes": p, "path": None} for p in pngs],
                "caption": [i.caption for i in items],
                "code": [i.code for i in items],
                "family": [i.family for i in items],
                "source": [i.source for i in items],
                "seed": [i.seed for i in items],
                "params": [json.dumps(i.params) for i in items],
            },
            features=features,
        )
    tmp = Path(tempfile.mkdtemp(prefix=".hf.", dir=path.parent))
    try:
        dd.save_to_disk(str(tmp / "hf"))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp / "hf", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class ExportReport:
    """Where the exports went and how many items each split holds."""

    counts: dict[str, int] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)


def export(
    root: str | os.PathLike,
    formats: Sequence[str] = DEFAULT_FORMATS,
    *,
    seed: int = 0,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_distance: int = 8,
    rl_fraction: float = 0.0,
) -> ExportReport:
    """Export the (deduplicated) items of the dataset at ``root``; see the module docstring.

    Raises:
        UserError: no dataset at ``root``.
        ValueError: an unknown format or bad fractions.
    """
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    ds = Dataset(root)
    items = ds.load_items()
    pngs = [ds.image_path(it).read_bytes() for it in items]
    splits = assign_splits(
        items,
        pngs,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split_distance=split_distance,
        rl_fraction=rl_fraction,
    )
    out = ds.root / "exports"
    report = ExportReport()
    by_split: dict[str, tuple[list[Item], list[bytes]]] = {}
    for split in SPLITS:
        chosen = [(it, p) for it, p in zip(items, pngs, strict=True) if splits[it.id] == split]
        if chosen:
            by_split[split] = ([c[0] for c in chosen], [c[1] for c in chosen])
        else:  # an earlier export's file of this split would be read as this one's
            for fmt in SPLIT_FILES:
                _split_file(out, fmt, split).unlink(missing_ok=True)
        if split != "rl" or chosen:
            report.counts[split] = len(chosen)
    atomic_write_json(out / "splits.json", splits)
    report.paths.append(str(out / "splits.json"))
    for split, (its, ps) in by_split.items():
        if "r1" in formats:
            _write_parquet(_split_file(out, "r1", split), r1_rows(its, ps, split))
        if "s1" in formats:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in s1_records(its))
            atomic_write_text(_split_file(out, "s1", split), text)
        if "verl_sft" in formats:
            _write_parquet(_split_file(out, "verl_sft", split), verl_sft_rows(its, ps))
        report.paths += [str(_split_file(out, fmt, split)) for fmt in SPLIT_FILES if fmt in formats]
    if "hf" in formats:
        _write_hf(out / "hf", by_split)
        report.paths.append(str(out / "hf"))
    return report
