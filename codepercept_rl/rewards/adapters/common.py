"""Turning a peer framework's row (label / ground truth / extra info) into a ``RewardSample``.

verl and OpenRLHF hand a reward function strings, never images, so the target travels as an id or a path:

- ``target_id``: an image already registered with the reward service (``POST /v1/targets``);
- ``target_path``: a PNG file the reward process reads (optionally confined to a root directory);
- ``reference_code``, ``reference_caption``, ``task`` (``code`` | ``caption``).

A label / ground truth may be a mapping with those keys, a JSON object string, or a plain string, which is
taken as the reference code.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from codepercept_rl.rewards.types import RewardSample

FIELDS = ("target_id", "target_path", "reference_code", "reference_caption", "task")


def parse_label(label: Any) -> dict[str, Any]:
    """The fields of a label: a mapping, a JSON object string, a plain string (reference code) or None."""
    if label is None:
        return {}
    if isinstance(label, Mapping):
        return {k: label[k] for k in FIELDS if label.get(k) is not None}
    if isinstance(label, str):
        stripped = label.strip()
        if stripped.startswith("{"):
            try:
                obj = json.loads(stripped)
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                return parse_label(obj)
        return {"reference_code": label} if stripped else {}
    raise ValueError(f"label must be a mapping, a string or None, got {type(label).__name__}")


class TargetFiles:
    """Reads target PNGs by path, cached (LRU), optionally only under ``root``.

    Args:
        root: if set, a path must resolve inside this directory (a request cannot make the reward process
            read arbitrary files); None allows any path the process can read.
        max_entries: cached images.
    """

    def __init__(self, root: str | Path | None = None, max_entries: int = 512) -> None:
        self.root = Path(root).resolve() if root is not None else None
        self.max_entries = max_entries
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()  # verl may call from several executor threads at once

    def read(self, path: str) -> bytes:
        """The file's bytes.

        Raises:
            ValueError: outside ``root``, missing, or unreadable (message names the path).
        """
        resolved = Path(path).expanduser().resolve()
        if self.root is not None and not resolved.is_relative_to(self.root):
            raise ValueError(f"target_path {path!r} is outside the allowed root {str(self.root)!r}")
        key = str(resolved)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        try:
            data = resolved.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read target_path {path!r}: {exc.strerror or exc}") from None
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return data


def sample_from_fields(completion: Any, fields: Mapping[str, Any], files: TargetFiles) -> RewardSample:
    """A ``RewardSample`` from a completion and label fields.

    An unreadable ``target_path`` leaves the sample without a target and records why in
    ``extra["target_error"]`` (the reward then falls back to the reference render, or reports
    ``no_reference``): one bad row never stops the batch.
    """
    extra: dict[str, Any] = {}
    target_png = None
    path = fields.get("target_path")
    if path is not None:
        try:
            target_png = files.read(str(path))
        except ValueError as exc:
            extra["target_error"] = str(exc)
    target_id = fields.get("target_id")
    return RewardSample(
        completion=completion,
        task=str(fields.get("task") or "code"),
        target_id=str(target_id) if target_id is not None and target_png is None else None,
        target_png=target_png,
        reference_code=fields.get("reference_code")
        if isinstance(fields.get("reference_code"), str)
        else None,
        reference_caption=fields.get("reference_caption")
        if isinstance(fields.get("reference_caption"), str)
        else None,
        extra=extra,
    )
