"""Benchmark loaders: one ``BenchItem`` list from any of the layouts the harness accepts.

    items = load_bench("benchmarks/stem2code")        # auto-detects the layout
    items = load_bench("STEM2Code20260405.jsonl")     # the released STEM2Code-Eval file

Layouts (auto-detected in this order):

1. **Native manifest**: ``DIR/bench.jsonl`` (or any ``.jsonl`` whose rows have ``reference_code``), one row per
   item: ``{"id", "image": "images/x.png", "reference_code": "...", "category"?, "caption"?, "question"?,
   "answer"?, "choices"?}``; paths are relative to the file's directory.
2. **Item folders**: ``DIR/<id>/image.png`` + ``DIR/<id>/reference.py`` (+ optional ``caption.txt`` and
   ``meta.json`` with ``category`` / ``question`` / ``answer``).
3. **STEM2Code-Eval JSONL** (the released benchmark, TongkunGuan/Qwen-CodePercept, read by its
   ``evaluation.py``): rows with a ``messages`` list; the released script takes the image from
   ``messages[1].content[0].image`` and the reference code from ``messages[3].content[0].text``. Those indices
   are tried first; failing them, the first ``{"type": "image"}`` / ``image_url`` part of a user turn and the
   last assistant turn (string or text parts, fenced or raw). Item ids are the row index as a string, as in
   the released script (its ``uuid``). The category is the row's ``category`` / ``source`` field if any, else
   the dataset prefix of the image file name (``MathVision_images_1007_v5.png`` -> ``MathVision``): an
   assumption, the released rows hold no category field that we could see.
4. **data_tools exports** (R1 verl parquet ``DIR/exports/r1/test.parquet`` with the image bytes inline, or
   the S1 JSONL below, when given the file or the dataset directory).
5. **data_tools S1 JSONL** (``DIR/exports/s1/test.jsonl``, or that file itself): rows ``{"id", "task",
   "images": [path relative to the file's folder], "messages": [...]}``; only ``task == "code"`` rows are items;
   the category is the generator family (the id is ``<family>-<12 hex>-code``).

Loading never fails on one bad item: a missing image path or reference code is recorded in
``BenchItem.problems`` and the harness reports the item instead of scoring it. A bench that cannot be read at
all (no such path, unknown layout, invalid JSON) raises ``UserError`` naming the file and line.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from codepercept_rl.errors import UserError
from reward_servers.extract import extract_code

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_SOURCE_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9.]*?)(?:_images|_img|_)")


@dataclass
class BenchItem:
    """One benchmark item.

    Attributes:
        id: unique id within the bench (results are keyed by it).
        image_path: the target image, or None when the row names none.
        reference_code: the reference matplotlib program, or None.
        category: group for the per-category breakdown ("all" when unknown).
        caption: an optional reference caption.
        question / answer / choices: a question about the image (captioner-solver protocol), when given.
        problems: what is wrong with the item as loaded (the harness records them instead of scoring).
    """

    id: str
    image_path: Path | None
    reference_code: str | None
    category: str = "all"
    caption: str | None = None
    question: str | None = None
    answer: str | None = None
    choices: list[str] | None = None
    problems: list[str] = field(default_factory=list)
    image_bytes: bytes | None = None  # an image embedded in the bench file (verl parquet) instead of a path

    def read_image(self) -> bytes:
        """The image as PNG bytes (JPEG / WebP / ... bench images are re-encoded to PNG).

        Raises:
            OSError: the file is missing or unreadable.
            ValueError: the file is not an image PIL can decode.
        """
        if self.image_bytes is not None:
            data = self.image_bytes
        elif self.image_path is None:
            raise FileNotFoundError(f"item {self.id}: no image path")
        else:
            data = self.image_path.read_bytes()
        if data.startswith(_PNG_MAGIC):
            return data
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                buf = io.BytesIO()
                img.convert("RGB").save(buf, format="PNG")
        except (Image.UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as exc:
            raise ValueError(f"item {self.id}: not a decodable image ({exc})") from None
        return buf.getvalue()


def load_bench(path: str | os.PathLike, limit: int | None = None) -> list[BenchItem]:
    """Loads a benchmark in any supported layout (module docstring).

    Args:
        path: a bench directory or a JSONL file.
        limit: keep only the first ``limit`` items (smoke runs).

    Returns:
        The items in file order; ids are unique.

    Raises:
        UserError: the path does not exist, the layout is unknown, a JSONL line is not a JSON object, or two
            items share an id.
    """
    root = Path(path)
    if not root.exists():
        raise UserError(f"bench '{root}' does not exist")
    if root.is_dir():
        items = _load_dir(root)
    elif root.suffix == ".parquet":
        items = _load_parquet(root)
    else:
        items = _load_jsonl(root)
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise UserError(f"bench '{root}': duplicate item id {item.id!r}")
        seen.add(item.id)
    return items[:limit] if limit is not None else items


def _load_dir(root: Path) -> list[BenchItem]:
    if (root / "bench.jsonl").is_file():
        return _load_jsonl(root / "bench.jsonl")
    s1 = root / "exports" / "s1" / "test.jsonl"
    if s1.is_file():
        return _load_jsonl(s1)
    r1 = root / "exports" / "r1" / "test.parquet"
    if r1.is_file():
        return _load_parquet(r1)
    folders = sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and ((p / "reference.py").exists() or (p / "image.png").exists())
    )
    if folders:
        return [_folder_item(p) for p in folders]
    raise UserError(
        f"bench directory '{root}' has no bench.jsonl, no exports/s1/test.jsonl and no item folders "
        "(<id>/image.png + <id>/reference.py)"
    )


def _folder_item(folder: Path) -> BenchItem:
    meta: dict[str, Any] = {}
    if (folder / "meta.json").is_file():
        meta = _json_object((folder / "meta.json").read_text(encoding="utf-8"), folder / "meta.json")
    item = BenchItem(
        id=str(meta.get("id", folder.name)),
        image_path=folder / "image.png",
        reference_code=_read_optional(folder / "reference.py"),
        category=str(meta.get("category") or "all"),
        caption=_read_optional(folder / "caption.txt"),
        question=_opt_str(meta.get("question")),
        answer=_opt_str(meta.get("answer")),
        choices=_opt_choices(meta.get("choices")),
    )
    _check(item)
    return item


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, _json_object(line, f"{path}:{lineno}")


def _json_object(text: str, where: object) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _load_jsonl(path: Path) -> list[BenchItem]:
    rows = list(_rows(path))
    if not rows:
        raise UserError(f"bench file '{path}' holds no items")
    first = rows[0][1]
    if "task" in first and "images" in first and "messages" in first:
        # data_tools S1 export: image paths are relative to the JSONL's own folder.
        return [_s1_item(row, path.parent) for _, row in rows if row.get("task") == "code"]
    if "messages" in first:
        return [_stem2code_item(i, row, path.parent) for i, (_, row) in enumerate(rows)]
    if "reference_code" in first or "image" in first:
        return [_native_item(lineno, row, path.parent) for lineno, row in rows]
    raise UserError(
        f"bench file '{path}': unknown row layout (keys {sorted(first)[:8]}); expected a native manifest "
        "(id, image, reference_code), a STEM2Code-Eval row (messages) or a data_tools S1 row (task, images)"
    )


def _resolve(base: Path, value: Any) -> Path | None:
    if not isinstance(value, str) or not value:
        return None
    if value.startswith("file://"):
        value = value[len("file://") :]
    p = Path(value)
    if p.is_absolute():
        return p
    return base / p


def _native_item(lineno: int, row: Mapping[str, Any], base: Path) -> BenchItem:
    item = BenchItem(
        id=str(row.get("id", lineno - 1)),
        image_path=_resolve(base, row.get("image")),
        reference_code=_opt_str(row.get("reference_code")),
        category=str(row.get("category") or "all"),
        caption=_opt_str(row.get("caption")),
        question=_opt_str(row.get("question")),
        answer=_opt_str(row.get("answer")),
        choices=_opt_choices(row.get("choices")),
    )
    _check(item)
    return item


def _text_of(content: Any) -> str | None:
    """Text of a chat message's content: a string, or the text parts of a content list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
        return "\n".join(texts) if texts else None
    return None


def _image_of(content: Any) -> str | None:
    if not isinstance(content, list):
        return None
    for part in content:
        if not isinstance(part, Mapping):
            continue
        if isinstance(part.get("image"), str):
            return part["image"]
        url = part.get("image_url")
        if isinstance(url, Mapping) and isinstance(url.get("url"), str):
            return url["url"]
        if isinstance(url, str):
            return url
    return None


def _stem2code_item(index: int, row: Mapping[str, Any], base: Path) -> BenchItem:
    messages = row.get("messages")
    messages = messages if isinstance(messages, list) else []
    image, code = None, None
    # 1. The released script's fixed positions.
    try:
        image = messages[1]["content"][0]["image"]
        code = messages[3]["content"][0]["text"]
    except (IndexError, KeyError, TypeError):
        image, code = None, None
    # 2. Otherwise: the first image of a user turn, the last assistant turn.
    if not isinstance(image, str):
        image = next(
            (
                im
                for m in messages
                if isinstance(m, Mapping) and m.get("role") == "user"
                for im in [_image_of(m.get("content"))]
                if im
            ),
            None,
        )
    if not isinstance(code, str):
        assistants = [m for m in messages if isinstance(m, Mapping) and m.get("role") == "assistant"]
        code = _text_of(assistants[-1].get("content")) if assistants else None
    if isinstance(code, str) and "```" in code:
        code = extract_code(code)
    image_path = _resolve(base, image)
    category = row.get("category") or row.get("source")
    if not category and image_path is not None:
        m = _SOURCE_PREFIX.match(image_path.name)
        category = m.group(1) if m else None
    item = BenchItem(
        id=str(row.get("id", row.get("uuid", index))),
        image_path=image_path,
        reference_code=code if isinstance(code, str) and code.strip() else None,
        category=str(category or "all"),
        caption=_opt_str(row.get("caption")),
        question=_opt_str(row.get("question")),
        answer=_opt_str(row.get("answer")),
        choices=_opt_choices(row.get("choices")),
    )
    _check(item)
    return item


def _s1_item(row: Mapping[str, Any], base: Path) -> BenchItem:
    rid = str(row.get("id", ""))
    images = row.get("images") or []
    messages = row.get("messages") or []
    assistants = [m for m in messages if isinstance(m, Mapping) and m.get("role") == "assistant"]
    answer = _text_of(assistants[-1].get("content")) if assistants else None
    code = extract_code(answer) if isinstance(answer, str) else None
    item_id = rid[: -len("-code")] if rid.endswith("-code") else rid
    family = item_id.rsplit("-", 1)[0] if "-" in item_id else "all"
    item = BenchItem(
        id=item_id,
        image_path=_resolve(base, images[0]) if images else None,
        reference_code=code if code and code.strip() else None,
        category=family,
    )
    _check(item)
    return item


def _load_parquet(path: Path) -> list[BenchItem]:
    """data_tools' R1 export (verl RL rows): ``images[0].bytes``, ``reward_model.ground_truth``, ``extra_info``."""
    import pyarrow.parquet as pq  # only for this layout

    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    items = []
    for i, row in enumerate(rows):
        extra = row.get("extra_info") or {}
        images = row.get("images") or []
        first = images[0] if images else None
        item = BenchItem(
            id=str(extra.get("item_id", i)),
            image_path=None,
            reference_code=_opt_str((row.get("reward_model") or {}).get("ground_truth")),
            category=str(extra.get("family") or row.get("data_source") or "all"),
            image_bytes=first.get("bytes") if isinstance(first, Mapping) else None,
        )
        _check(item)
        items.append(item)
    return items


def _check(item: BenchItem) -> None:
    """Records what is missing; the image is only checked for existence here (decoding is the harness's)."""
    if item.image_bytes is not None:
        pass
    elif item.image_path is None:
        item.problems.append("no image path in the bench row")
    elif not item.image_path.is_file():
        item.problems.append(f"image file not found: {item.image_path}")
    if item.reference_code is None:
        item.problems.append("no reference code")


def _read_optional(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_choices(value: Any) -> list[str] | None:
    return [str(v) for v in value] if isinstance(value, list) else None
