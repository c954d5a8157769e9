"""The dataset directory: items in JSONL shards, images as PNG files, a manifest; every write atomic.

Layout (see also ``data_tools/__init__.py``)::

    DIR/manifest.json                 what built it (spec), shard list, summary
    DIR/items/shard-00000.jsonl       one Item per line; the shard's commit point (present = shard finished)
    DIR/items/shard-00000.stats.json  per-shard counts (rendered, failed by status), written just before it
    DIR/images/<item id>.png          the rendered image of each item
    DIR/dedup.json                    near-duplicate groups found after the build ({"removed": {id: kept_id}})
    DIR/exports/...                   exports (data_tools.exports)

A shard is written in order images -> stats -> JSONL, each through a temp file + ``os.replace``, so a crash or
a full disk leaves either a finished shard or no shard file (stray images of an unfinished shard are simply
overwritten by the rerun). Readers only trust shards whose JSONL exists.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from codepercept_rl.errors import UserError
from codepercept_rl.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

FORMAT_VERSION = 1


@dataclass
class Item:
    """One image-caption-code triplet.

    Attributes:
        id: unique, stable id (``<family>-<12 hex>``).
        family: generator family, or "reproduce"/"diversity" for teacher items.
        seed: generator seed (teacher items: 0).
        code: the program (ground truth for the image).
        caption: code-grounded caption (verified against ``trace``).
        image: path of the PNG relative to the dataset directory.
        params: generator parameters or teacher provenance (seed image, attempts, judge verdicts).
        subject: generator subject phrase ("" for teacher items).
        source: "generator", "reproduce" or "diversity".
        trace: the sandbox's execution trace of ``code``.
    """

    id: str
    family: str
    seed: int
    code: str
    caption: str
    image: str
    params: dict[str, Any] = field(default_factory=dict)
    subject: str = ""
    source: str = "generator"
    trace: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """One JSONL line."""
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        """Inverse of :meth:`to_json` (after ``json.loads``)."""
        return cls(**d)


def shard_name(index: int) -> str:
    """``shard-00042``."""
    return f"shard-{index:05d}"


class Dataset:
    """A dataset directory (created on first write).

    Args:
        root: the directory.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        """``DIR/manifest.json``."""
        return self.root / "manifest.json"

    def image_path(self, item_or_id: Item | str) -> Path:
        """Absolute path of an item's PNG."""
        item_id = item_or_id.id if isinstance(item_or_id, Item) else item_or_id
        return self.root / "images" / f"{item_id}.png"

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None when there is none yet.

        Raises:
            UserError: the manifest exists but is not valid JSON.
        """
        if not self.manifest_path.exists():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{self.manifest_path}: not valid JSON ({e})") from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest atomically (``format_version`` added)."""
        atomic_write_json(self.manifest_path, {"format_version": FORMAT_VERSION, **manifest})

    def shard_path(self, index: int) -> Path:
        """``DIR/items/shard-<index>.jsonl``."""
        return self.root / "items" / f"{shard_name(index)}.jsonl"

    def shard_done(self, index: int) -> bool:
        """A shard is finished iff its JSONL exists (it is written last, atomically)."""
        return self.shard_path(index).exists()

    def write_shard(
        self, index: int, items: list[Item], images: dict[str, bytes], stats: dict[str, Any]
    ) -> None:
        """Write one shard: images, then stats, then the JSONL (the commit point).

        Raises:
            OSError: disk full, not writable...; the JSONL is then absent, so the shard counts as unfinished.
        """
        for item in items:
            atomic_write_bytes(self.root / item.image, images[item.id])
        atomic_write_json(self.shard_path(index).with_suffix(".stats.json"), stats)
        atomic_write_text(self.shard_path(index), "".join(item.to_json() + "\n" for item in items))

    def shard_stats(self, index: int) -> dict[str, Any]:
        """The stats sidecar of a finished shard ({} if missing)."""
        path = self.shard_path(index).with_suffix(".stats.json")
        return json.loads(path.read_text()) if path.exists() else {}

    def shard_indices(self) -> list[int]:
        """Indices of the finished shards, sorted."""
        items_dir = self.root / "items"
        if not items_dir.is_dir():
            return []
        return sorted(int(p.stem.split("-")[1]) for p in items_dir.glob("shard-*.jsonl"))

    def iter_items(self, dedup: bool = True) -> Iterator[Item]:
        """All items of finished shards, in shard order; near-duplicates listed in dedup.json are skipped.

        Raises:
            UserError: the directory holds no dataset, or a shard line is not a valid item.
        """
        indices = self.shard_indices()
        if not indices:
            raise UserError(f"{self.root}: no dataset here (no items/shard-*.jsonl)")
        removed = self.removed_ids() if dedup else set()
        for index in indices:
            path = self.shard_path(index)
            with path.open() as f:
                for lineno, line in enumerate(f, 1):
                    try:
                        item = Item.from_dict(json.loads(line))
                    except (json.JSONDecodeError, TypeError) as e:
                        raise UserError(f"{path}:{lineno}: not a valid item ({e})") from None
                    if item.id not in removed:
                        yield item

    def load_items(self, dedup: bool = True) -> list[Item]:
        """``list(iter_items(dedup))``."""
        return list(self.iter_items(dedup))

    def removed_ids(self) -> set[str]:
        """Ids marked as near-duplicates of a kept item."""
        path = self.root / "dedup.json"
        return set(json.loads(path.read_text()).get("removed", {})) if path.exists() else set()

    def write_dedup(self, removed: dict[str, str]) -> None:
        """Record near-duplicates: ``removed[id] = id of the kept item it duplicates``."""
        atomic_write_json(self.root / "dedup.json", {"removed": removed})
