"""R1 prompts: verl's multimodal RL parquet (what ``codepercept-rl data export`` writes) as rollout prompts.

A row: ``prompt`` (chat list, the user turn holds ``<image>``), ``images`` ([{"bytes": png}]),
``reward_model.ground_truth`` (the reference code), ``extra_info`` ({item_id, target_id, task?, ...}),
``data_source``. A row that cannot be used (no prompt, an image that does not decode, more ``<image>`` tags than
images) is skipped with a counted warning naming the file and row, or stops the job with ``data.strict=true``.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from codepercept_rl.errors import UserError
from codepercept_rl.rewards import RewardSample
from codepercept_rl.rollout import RolloutPrompt

log = logging.getLogger(__name__)


@dataclass
class R1Item:
    """One prompt of the RL set and what its reward needs."""

    index: int
    item_id: str
    prompt: RolloutPrompt
    task: str
    reference_code: str | None
    target_png: bytes | None
    data_source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def reward_sample(self, completion: str) -> RewardSample:
        """The reward's view of ``completion`` as an answer to this prompt."""
        return RewardSample(
            completion=completion,
            task=self.task,
            target_id=f"r1/{self.item_id}" if self.target_png is not None else None,
            reference_code=self.reference_code,
            extra={"item_id": self.item_id, "data_source": self.data_source},
        )


class R1Dataset:
    """The rows of one or more verl RL parquet files.

    Args:
        files: parquet paths.
        strict: stop at the first bad row instead of skipping it.
    """

    def __init__(self, files: Sequence[str | Path], strict: bool = False) -> None:
        import pyarrow.parquet as pq

        if not files:
            raise UserError("no R1 data files given (data.train_files / data.val_files)")
        self.items: list[R1Item] = []
        self.skipped: dict[str, int] = {}
        for path in map(Path, files):
            if not path.is_file():
                raise UserError(f"R1 data file not found: {path}")
            try:
                rows = pq.read_table(path).to_pylist()
            except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a bad file; name the file
                raise UserError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
            for row_no, row in enumerate(rows):
                try:
                    self.items.append(_item(row, len(self.items)))
                except ValueError as e:
                    if strict:
                        raise UserError(f"{path} row {row_no}: {e}") from None
                    reason = str(e).split(":")[0]
                    self.skipped[reason] = self.skipped.get(reason, 0) + 1
                    log.warning("%s row %d skipped: %s", path, row_no, e)
        if not self.items:
            raise UserError(f"no usable rows in {', '.join(map(str, files))} (skipped: {self.skipped})")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> R1Item:
        return self.items[i]

    def targets(self) -> dict[str, bytes]:
        """Target images by the id samples use (register them once with the reward backend)."""
        return {f"r1/{it.item_id}": it.target_png for it in self.items if it.target_png is not None}


class PromptSampler:
    """Epoch-shuffled prompt order with a resumable position: ``state()`` / ``load_state()`` in checkpoints."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.pos = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        """The next ``k`` indices, crossing epoch boundaries."""
        out = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state(self) -> dict[str, int]:
        """Position for a checkpoint."""
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict[str, int]) -> None:
        """Continue from a checkpoint's position."""
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._make_order()

    def __iter__(self) -> Iterator[int]:
        while True:
            yield from self.take(1)


def _item(row: Any, index: int) -> R1Item:
    if not isinstance(row, dict):
        raise ValueError(f"not a mapping: {type(row).__name__}")
    prompt = row.get("prompt")
    if not isinstance(prompt, list) or not prompt or not all(isinstance(m, dict) for m in prompt):
        raise ValueError("bad prompt: expected a non-empty chat list")
    images = []
    for img in row.get("images") or []:
        data = img.get("bytes") if isinstance(img, dict) else img
        if not isinstance(data, (bytes, bytearray)):
            raise ValueError("bad image: expected {'bytes': png}")
        try:
            Image.open(io.BytesIO(data)).verify()
        except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
            raise ValueError(f"bad image: does not decode ({type(e).__name__})") from None
        images.append(bytes(data))
    n_tags = sum(str(m.get("content", "")).count("<image>") for m in prompt)
    if n_tags != len(images):
        raise ValueError(f"bad prompt: {n_tags} <image> tags for {len(images)} images")
    extra = dict(row.get("extra_info") or {})
    reward_model = row.get("reward_model") or {}
    reference = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    item_id = str(extra.get("item_id", extra.get("index", index)))
    return R1Item(
        index=index,
        item_id=item_id,
        prompt=RolloutPrompt(messages=[dict(m) for m in prompt], images=images, prompt_id=item_id),
        task=str(extra.get("task", "code")),
        reference_code=reference if isinstance(reference, str) and reference.strip() else None,
        target_png=images[0] if images else None,
        data_source=str(row.get("data_source", "")),
        extra=extra,
    )
