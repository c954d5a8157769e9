"""The S1 (SFT) dataset: messages JSONL with images, tokenized with assistant-only loss masks.

A row, as ``data_tools`` exports it (image paths relative to the JSONL file's folder)::

    {"id": "geo-12", "task": "code", "images": ["img/geo-12.png"],
     "messages": [{"role": "user", "content": "<image>Write matplotlib code that draws this."},
                  {"role": "assistant", "content": "```python\\nimport matplotlib.pyplot as plt\\n...```"}]}

Each ``<image>`` in a user turn is replaced, in order, by the row's next image. The conversation is rendered
with the processor's chat template one turn at a time, so the tokens are exactly what the model sees at
inference: an assistant's header (``<|im_start|>assistant\\n``) is tokenized on its own, like a generation
prompt, and only the reply after it, up to and including its end token, carries loss.

Rows are indexed up front and built when fetched. The index keeps, per row, its file offset and line, task,
image count, token length and target-token count (34 bytes: arrays of integers and a pointer to a shared task
string); computing a length takes the chat template, the tokenizer and each image's *header* (its size gives
its token count), never its pixels. ``dataset[i]`` then reads the row again and decodes and processes its
images; recently fetched rows are kept in an LRU cache of ``cache_bytes`` (a small dataset is built once,
however many epochs). Memory is the index plus that bound, whatever the dataset's size; every rank indexes the
same rows and builds only the ones in its own micro-batches.

Bad rows (not JSON, missing fields, a missing image file, an image whose header does not read, a wrong number
of ``<image>`` placeholders, no assistant turn, longer than ``max_length`` tokens) are found while indexing:
each is logged with its file, line and id and counted by reason in :attr:`S1Dataset.skipped`; with
``strict=True`` the first one raises :class:`~codepercept_rl.errors.UserError` instead. An image whose header
reads but whose pixel data does not decode (a truncated download) is found only when its row is fetched:
with ``strict=True`` that raises the same error naming the row; otherwise the row is *masked*: built with a
blank image of the same size and an all-zero loss mask (the batch keeps its shape; the row adds nothing to the
loss, though its target tokens stay in the step's normaliser), logged once and recorded in
:attr:`S1Dataset.masked` (the S1 job's summary counts them, over all ranks, as ``data/masked_<reason>``).

What is trusted: images are decoded here with PIL (its decompression-bomb limit applies when a header is read,
and a bomb is a skipped ``bad_image`` row); file paths are joined to the JSONL's folder as given. Nothing in a
row is executed: code in assistant turns is only tokenized (the generation check runs model-written code in
the reward pool's sandbox, never here).
"""

from __future__ import annotations

import json
import logging
from array import array
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers.processing_utils import ProcessorMixin

from codepercept_rl.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["S1Example", "S1Dataset", "BadRow", "IMAGE_PLACEHOLDER", "conversation_lengths"]

IMAGE_PLACEHOLDER = "<image>"
_ROLES = ("system", "user", "assistant")
_CACHE_BYTES = 1 << 30  # fetched rows kept per dataset: the quickstart's whole S1 set (~0.4 GB) fits


class BadRow(ValueError):
    """A row that cannot be trained on; ``reason`` is a short key for the skip counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class S1Example:
    """One tokenized conversation.

    Attributes:
        id: the row id.
        task: ``caption`` or ``code`` (any string; the mixture ratio is keyed by it).
        input_ids: (T,) token ids.
        loss_mask: (T,) 1.0 on assistant reply tokens.
        pixel_values: (P, D) patches of the row's images, or None for a text-only row.
        image_grid_thw: (N, 3) each image's patch grid, or None.
        messages: the raw messages (the generation check builds its prompt from them).
        images: the decoded RGB images.
    """

    id: str
    task: str
    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    messages: list[dict[str, str]]
    images: list[Image.Image]

    @property
    def length(self) -> int:
        """Tokens in the sequence."""
        return int(self.input_ids.shape[0])


class S1Dataset:
    """S1 rows from one or more JSONL files, indexed up front and tokenized by ``processor`` when fetched.

    Args:
        files: JSONL paths.
        processor: the model's processor (chat template, tokenizer, image processor).
        max_length: longest sequence kept, in tokens (image tokens included).
        strict: raise on the first bad row instead of skipping (or, at fetch time, masking) it.
        image_key: the row field holding the image paths (``data.image_key``).
        cache_bytes: bytes of fetched rows (tensors and decoded images) kept for reuse; 0 keeps none.
    """

    def __init__(
        self,
        files: list[str] | list[Path],
        processor: ProcessorMixin,
        max_length: int,
        strict: bool = False,
        image_key: str = "images",
        cache_bytes: int = _CACHE_BYTES,
    ) -> None:
        self.processor = processor
        self.image_key = image_key
        self.max_length = max_length
        self.strict = strict
        self.cache_bytes = cache_bytes
        self.skipped: Counter[str] = Counter()
        self.masked: dict[int, str] = {}  # row -> reason, rows whose images failed to decode when fetched
        # The index: a few machine words per row (arrays, not Python objects), plus the task strings.
        self._files: list[Path] = []
        self._file = array("I")
        self._offset = array("q")
        self._line = array("I")
        self._length = array("I")
        self._targets = array("I")
        self._n_images = array("H")
        self._tasks: list[str] = []
        self._cache: OrderedDict[int, tuple[S1Example, int]] = OrderedDict()
        self._cached_bytes = 0
        if not files:
            raise UserError("no S1 files given (data.train_files is empty)")
        for path in map(Path, files):
            if not path.is_file():
                raise UserError(f"S1 file not found: {path}")
            self._index_file(path)

    def __len__(self) -> int:
        return len(self._length)

    def __getitem__(self, i: int) -> S1Example:
        """Row ``i``, built now (images decoded and processed) or taken from the cache.

        Raises:
            IndexError: ``i`` out of range.
            UserError: ``strict`` and an image of the row does not decode, or the row (or an image's header)
                changed since it was indexed.
        """
        if not 0 <= i < len(self):
            raise IndexError(f"S1 row {i} out of range ({len(self)} rows)")
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit[0]
        example = self._build(i)
        self._remember(i, example)
        return example

    @property
    def examples(self) -> list[S1Example]:
        """Every row, built (all images processed at once: for small sets and tests)."""
        return [self[i] for i in range(len(self))]

    @property
    def lengths(self) -> Sequence[int]:
        """Token length of every row, in order (from the index: no row is built)."""
        return self._length

    @property
    def targets(self) -> Sequence[int]:
        """Target (loss-carrying) tokens of every row, in order: a batch's loss normaliser without building it."""
        return self._targets

    @property
    def n_images(self) -> Sequence[int]:
        """Images of every row, in order."""
        return self._n_images

    @property
    def tasks(self) -> list[str]:
        """Task of every row, in order."""
        return self._tasks

    # ------------------------------------------------------------------------------------------------------------
    # index

    def _index_file(self, path: Path) -> None:
        file_no = len(self._files)
        self._files.append(path)
        tasks: dict[str, str] = {}  # one string object per task name, however many rows share it
        with open(path, "rb") as f:
            offset = 0
            for line_no, raw in enumerate(f, 1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                row_id = f"line {line_no}"
                try:
                    row = _parse(raw)
                    if isinstance(row, dict) and isinstance(row.get("id"), str):
                        row_id = row["id"]
                    task, n_images, length, targets = self._measure(row, path.parent)
                except BadRow as e:
                    self._skip(path, line_no, row_id, e)
                    continue
                self._file.append(file_no)
                self._offset.append(start)
                self._line.append(line_no)
                self._length.append(length)
                self._targets.append(targets)
                self._n_images.append(n_images)
                self._tasks.append(tasks.setdefault(task, task))

    def _measure(self, row: Any, root: Path) -> tuple[str, int, int, int]:
        """``(task, images, tokens, target tokens)`` of a row, from its text and its images' headers."""
        messages, task, image_paths = _validate(row, self.image_key)
        sizes = [_image_size(root, p) for p in image_paths]
        length, targets = conversation_lengths(self.processor, messages, sizes)
        if length > self.max_length:
            raise BadRow("too_long", f"{length} tokens > max_length {self.max_length} (sft.max_length)")
        return task, len(sizes), length, targets

    def _skip(self, path: Path, line_no: int, row_id: str, error: BadRow) -> None:
        where = f"{path}:{line_no} (row '{row_id}')"
        if self.strict:
            raise UserError(
                f"bad S1 row at {where}: {error} (data.strict=true; set it false to skip bad rows)"
            )
        self.skipped[error.reason] += 1
        log.warning("skipping S1 row at %s: %s", where, error)

    # ------------------------------------------------------------------------------------------------------------
    # fetch

    def _build(self, i: int) -> S1Example:
        path = self._files[self._file[i]]
        with open(path, "rb") as f:
            f.seek(self._offset[i])
            raw = f.readline()
        where = f"{path}:{self._line[i]}"
        changed = "changed since it was indexed (edit S1 files only between runs)"
        try:
            row = _parse(raw)
            if isinstance(row, dict) and isinstance(row.get("id"), str):
                where += f" (row '{row['id']}')"
            messages, task, image_paths = _validate(row, self.image_key)
            images: list[Image.Image] = []
            failed: BadRow | None = None
            for rel in image_paths:
                try:
                    images.append(_load_image(path.parent, rel))
                except _Undecodable as e:  # the header read when indexed: the pixel data is broken
                    if self.strict:
                        raise UserError(
                            f"bad S1 row at {where}: {e} (data.strict=true; set it false to mask such rows)"
                        ) from None
                    failed = failed or e
                    images.append(Image.new("RGB", e.size))  # a blank of the same size: the same tokens
            input_ids, loss_mask, pixel_values, grid = tokenize_conversation(self.processor, messages, images)
        except BadRow as e:
            raise UserError(f"S1 row at {where} {changed}: {e}") from None
        if input_ids.shape[0] != self._length[i] or int(loss_mask.sum()) != self._targets[i]:
            raise UserError(
                f"S1 row at {where} {changed}: {input_ids.shape[0]} tokens ({int(loss_mask.sum())} targets), "
                f"indexed as {self._length[i]} ({self._targets[i]})"
            )
        if failed is not None:
            loss_mask = torch.zeros_like(loss_mask)
            if i not in self.masked:
                log.warning("masking S1 row at %s: %s (its loss mask is zero; data.strict=true stops instead)",
                            where, failed)  # fmt: skip
            self.masked[i] = failed.reason
        return S1Example(row["id"], task, input_ids, loss_mask, pixel_values, grid, messages, images)

    def _remember(self, i: int, example: S1Example) -> None:
        size = sum(t.nbytes for t in (example.input_ids, example.loss_mask, example.pixel_values,
                                      example.image_grid_thw) if t is not None)  # fmt: skip
        size += sum(im.width * im.height * 3 for im in example.images)
        if size > self.cache_bytes:
            return
        while self._cached_bytes + size > self.cache_bytes:
            _, (_, old) = self._cache.popitem(last=False)
            self._cached_bytes -= old
        self._cache[i] = (example, size)
        self._cached_bytes += size


class _Undecodable(BadRow):
    """An image whose header reads but whose pixel data does not decode; ``size`` is its (width, height)."""

    def __init__(self, detail: str, size: tuple[int, int]) -> None:
        super().__init__("bad_image", detail)
        self.size = size


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise BadRow("not_json", f"not valid JSON: {msg}") from None


def _validate(row: Any, image_key: str) -> tuple[list[dict[str, str]], str, list[str]]:
    if not isinstance(row, dict):
        raise BadRow("bad_schema", f"a row must be a JSON object, got {type(row).__name__}")
    for key, tp in (("id", str), ("task", str), (image_key, list), ("messages", list)):
        if not isinstance(row.get(key), tp):
            raise BadRow("bad_schema", f"field '{key}' missing or not a {tp.__name__}")
    messages = row["messages"]
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str)):
            raise BadRow("bad_schema", f"message {i} must be {{'role': one of {_ROLES}, 'content': str}}")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise BadRow("no_assistant", "the conversation has no non-empty assistant turn")
    images = row[image_key]
    if not all(isinstance(p, str) for p in images):
        raise BadRow("bad_schema", f"'{image_key}' must be a list of relative paths")
    placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages if m["role"] == "user")
    if placeholders != len(images):
        raise BadRow(
            "image_count", f"{len(images)} image(s) but {placeholders} '{IMAGE_PLACEHOLDER}' placeholder(s)"
        )
    return messages, row["task"], images


def _open(root: Path, rel: str) -> Image.Image:
    """The image file opened (its header read, no pixel decoded)."""
    path = root / rel
    if not path.is_file():
        raise BadRow("missing_image", f"image not found: {path}")
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise BadRow("bad_image", f"image {path} does not decode: {e}") from None


def _image_size(root: Path, rel: str) -> tuple[int, int]:
    """``(height, width)`` from the image's header."""
    with _open(root, rel) as img:
        return img.height, img.width


def _load_image(root: Path, rel: str) -> Image.Image:
    with _open(root, rel) as img:
        try:
            img.load()
            return img.convert("RGB")
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            raise _Undecodable(f"image {root / rel} does not decode: {e}", img.size) from None


def _template_messages(messages: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Messages with ``<image>`` placeholders as typed image parts, the chat-template form."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] != "user":  # only user turns carry images
            out.append({"role": m["role"], "content": [{"type": "text", "text": m["content"]}]})
            continue
        parts: list[dict[str, str]] = []
        for i, text in enumerate(m["content"].split(IMAGE_PLACEHOLDER)):
            if i > 0:
                parts.append({"type": "image"})
            if text:
                parts.append({"type": "text", "text": text})
        out.append({"role": m["role"], "content": parts})
    return out


def render_prompt(processor: ProcessorMixin, messages: list[dict[str, str]]) -> str:
    """The chat-template text of ``messages`` followed by the assistant generation prompt."""
    return processor.apply_chat_template(
        _template_messages(messages), tokenize=False, add_generation_prompt=True
    )


def _pieces(processor: ProcessorMixin, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The conversation's text cut at turn boundaries: ``(text, trained on)`` pieces.

    The template is rendered for each growing prefix of the conversation; each new piece of text is
    tokenized on its own (with its images), which equals tokenizing the whole text when the pieces meet
    at special tokens, as they do in ChatML. Assistant replies (after the header that
    ``add_generation_prompt`` produces) carry loss; trailing newlines after the end token do not.
    """
    tmpl = _template_messages(messages)
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(tmpl):
        if m["role"] == "assistant":
            header = processor.apply_chat_template(tmpl[:i], tokenize=False, add_generation_prompt=True)
            pieces.append((_suffix(done, header), False))
            done = header
        full = processor.apply_chat_template(tmpl[: i + 1], tokenize=False)
        piece = _suffix(done, full)
        if m["role"] == "assistant":
            body = piece.rstrip("\n")
            pieces += [(body, True), (piece[len(body) :], False)]
        else:
            pieces.append((piece, False))
        done = full
    return [(text, trained) for text, trained in pieces if text]


def tokenize_conversation(
    processor: ProcessorMixin, messages: list[dict[str, str]], images: list[Image.Image]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Token ids, loss mask, pixel values and image grids of a conversation (pieces as in :func:`_pieces`).

    Raises:
        BadRow: the chat template is not prefix-stable (it rewrites earlier turns as the conversation grows).
    """
    ids: list[torch.Tensor] = []
    mask: list[torch.Tensor] = []
    pixels: list[torch.Tensor] = []
    grids: list[torch.Tensor] = []
    image_iter = iter(images)
    for text, trained in _pieces(processor, messages):
        n_images = text.count(processor.image_token)
        if n_images:
            piece_images = [next(image_iter) for _ in range(n_images)]
            out = processor(text=[text], images=piece_images, return_tensors="pt")
            pixels.append(out["pixel_values"])
            grids.append(out["image_grid_thw"])
            piece_ids = out["input_ids"][0]
        else:
            piece_ids = torch.tensor(
                processor.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long
            )
        ids.append(piece_ids)
        mask.append(torch.full(piece_ids.shape, float(trained)))
    pixel_values = torch.cat(pixels) if pixels else None
    grid = torch.cat(grids) if grids else None
    return torch.cat(ids), torch.cat(mask), pixel_values, grid


def conversation_lengths(
    processor: ProcessorMixin, messages: list[dict[str, str]], image_sizes: list[tuple[int, int]]
) -> tuple[int, int]:
    """``(tokens, target tokens)`` that :func:`tokenize_conversation` gives, from images' ``(height, width)``
    alone: the processor expands each image placeholder to ``patches / merge_size**2`` tokens, a function of
    the image's size, so no pixel is decoded.

    Raises:
        BadRow: as :func:`tokenize_conversation`.
    """
    image_processor = processor.image_processor
    per_image = iter(
        image_processor.get_number_of_image_patches(h, w, {}) // image_processor.merge_size**2
        for h, w in image_sizes
    )
    tokens = targets = 0
    for text, trained in _pieces(processor, messages):
        n_images = text.count(processor.image_token)
        if (
            n_images
        ):  # the processor's own tokenizer call, then each placeholder token becomes an image's tokens
            n = len(processor.tokenizer(text)["input_ids"]) + sum(
                next(per_image) - 1 for _ in range(n_images)
            )
        else:
            n = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        tokens += n
        targets += n if trained else 0
    return tokens, targets


def _suffix(prefix: str, text: str) -> str:
    if not text.startswith(prefix):
        raise BadRow("template", "the chat template is not prefix-stable; cannot find assistant turns")
    return text[len(prefix) :]
