"""The S1 (SFT) dataset: messages JSONL with images, tokenized with assistant-only loss masks.

A row, as ``data_tools`` exports it (image paths relative to the JSONL file's folder)::

    {"id": "geo-12", "task": "code", "images": ["img/geo-12.png"],
     "messages": [{"role": "user", "content": "<image>Write matplotlib code that draws this."},
                  {"role": "assistant", "content": "```python\\nimport matplotlib.pyplot as plt\\n...```"}]}

Each ``<image>`` in a user turn is replaced, in order, by the row's next image. The conversation is rendered
with the processor's chat template one turn at a time, so the tokens are exactly what the model sees at
inference: an assistant's header (``<|im_start|>assistant\\n``) is tokenized on its own, like a generation
prompt, and only the reply after it, up to and including its end token, carries loss.

Bad rows (not JSON, missing fields, a missing image file, an image that does not decode, a wrong number of
``<image>`` placeholders, no assistant turn, longer than ``max_length`` tokens) are skipped: each is logged
with its file, line and id and counted by reason in :attr:`S1Dataset.skipped`; with ``strict=True`` the first
one raises :class:`~codepercept_rl.errors.UserError` instead.

What is trusted: images are decoded here with PIL (its decompression-bomb limit applies and a bomb is a
skipped ``bad_image`` row); file paths are joined to the JSONL's folder as given. Nothing in a row is executed:
code in assistant turns is only tokenized (the generation check runs model-written code in the reward pool's
sandbox, never here).

Rows are read and tokenized eagerly, on every rank (the same rows, the same order): fine for the S1 sizes this
project trains on one machine (tens of thousands of rows); millions of rows want an offline tokenization pass.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers.processing_utils import ProcessorMixin

from codepercept_rl.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["S1Example", "S1Dataset", "BadRow", "IMAGE_PLACEHOLDER"]

IMAGE_PLACEHOLDER = "<image>"
_ROLES = ("system", "user", "assistant")


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
    """S1 rows from one or more JSONL files, tokenized by ``processor``.

    Args:
        files: JSONL paths.
        processor: the model's processor (chat template, tokenizer, image processor).
        max_length: longest sequence kept, in tokens (image tokens included).
        strict: raise on the first bad row instead of skipping it.
        image_key: the row field holding the image paths (``data.image_key``).
    """

    def __init__(
        self,
        files: list[str] | list[Path],
        processor: ProcessorMixin,
        max_length: int,
        strict: bool = False,
        image_key: str = "images",
    ) -> None:
        self.processor = processor
        self.image_key = image_key
        self.max_length = max_length
        self.strict = strict
        self.examples: list[S1Example] = []
        self.skipped: Counter[str] = Counter()
        if not files:
            raise UserError("no S1 files given (data.train_files is empty)")
        for path in map(Path, files):
            if not path.is_file():
                raise UserError(f"S1 file not found: {path}")
            self._read_file(path)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> S1Example:
        return self.examples[i]

    @property
    def lengths(self) -> list[int]:
        """Token length of every example, in order."""
        return [e.length for e in self.examples]

    @property
    def tasks(self) -> list[str]:
        """Task of every example, in order."""
        return [e.task for e in self.examples]

    # ------------------------------------------------------------------------------------------------------------
    def _read_file(self, path: Path) -> None:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row_id = f"line {line_no}"
                try:
                    row = json.loads(line)
                    if isinstance(row, dict) and isinstance(row.get("id"), str):
                        row_id = row["id"]
                    self.examples.append(self._example(row, path.parent))
                except json.JSONDecodeError as e:
                    self._skip(path, line_no, row_id, BadRow("not_json", f"not valid JSON: {e.msg}"))
                except BadRow as e:
                    self._skip(path, line_no, row_id, e)

    def _skip(self, path: Path, line_no: int, row_id: str, error: BadRow) -> None:
        where = f"{path}:{line_no} (row '{row_id}')"
        if self.strict:
            raise UserError(
                f"bad S1 row at {where}: {error} (data.strict=true; set it false to skip bad rows)"
            )
        self.skipped[error.reason] += 1
        log.warning("skipping S1 row at %s: %s", where, error)

    def _example(self, row: Any, root: Path) -> S1Example:
        messages, task, image_paths = _validate(row, self.image_key)
        images = [_load_image(root, p) for p in image_paths]
        input_ids, loss_mask, pixel_values, grid = tokenize_conversation(self.processor, messages, images)
        if input_ids.shape[0] > self.max_length:
            raise BadRow(
                "too_long", f"{input_ids.shape[0]} tokens > max_length {self.max_length} (sft.max_length)"
            )
        return S1Example(row["id"], task, input_ids, loss_mask, pixel_values, grid, messages, images)


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


def _load_image(root: Path, rel: str) -> Image.Image:
    path = root / rel
    if not path.is_file():
        raise BadRow("missing_image", f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not in the middle of training
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise BadRow("bad_image", f"image {path} does not decode: {e}") from None


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


def tokenize_conversation(
    processor: ProcessorMixin, messages: list[dict[str, str]], images: list[Image.Image]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Token ids, loss mask, pixel values and image grids of a conversation.

    The template is rendered for each growing prefix of the conversation; each new piece of text is
    tokenized on its own (with its images), which equals tokenizing the whole text when the pieces meet
    at special tokens, as they do in ChatML. Assistant replies (after the header that
    ``add_generation_prompt`` produces) carry loss; trailing newlines after the end token do not.

    Raises:
        BadRow: the chat template is not prefix-stable (it rewrites earlier turns as the conversation grows).
    """
    tmpl = _template_messages(messages)
    pieces: list[tuple[str, bool]] = []  # (text, trained on)
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
    ids: list[torch.Tensor] = []
    mask: list[torch.Tensor] = []
    pixels: list[torch.Tensor] = []
    grids: list[torch.Tensor] = []
    image_iter = iter(images)
    for text, trained in pieces:
        if not text:
            continue
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


def _suffix(prefix: str, text: str) -> str:
    if not text.startswith(prefix):
        raise BadRow("template", "the chat template is not prefix-stable; cannot find assistant turns")
    return text[len(prefix) :]
