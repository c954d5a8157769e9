"""A TRL ``reward_funcs`` entry backed by our rewards and a reward pool or remote reward services.

Use with TRL's GRPOTrainer::

    from codepercept_rl.rewards.adapters.trl import TRLReward
    reward_fn = TRLReward.from_url("http://127.0.0.1:8000", reward="render_similarity")
    trainer = GRPOTrainer(model=..., reward_funcs=[reward_fn], train_dataset=dataset, ...)

TRL's contract (trl 1.16, ``GRPOTrainer._calculate_rewards``): the function is called as
``fn(prompts=..., completions=..., completion_ids=..., **columns, trainer_state=..., log_extra=..., log_metric=...)``
with one entry per completion; completions are strings or ``[{"role": "assistant", "content": ...}]`` lists;
every dataset column other than ``prompt`` arrives as a list (an ``image`` column as PIL images). It returns one
``float | None`` per completion (``None`` -> NaN, left out of the group statistics). The callable is async, so
TRL runs it on its event loop next to other async rewards, and it has a ``__name__`` for TRL's logs.

Dataset columns read (rename with ``columns=``): ``image`` / ``images`` (PIL image, PNG bytes, an HF
``{"bytes": ...}`` dict, or a list of those: the first is the target), ``target_id``, ``reference_code``,
``reference_caption``, ``task``. Components are logged through ``log_metric`` (batch means, named
``<__name__>/<component>``) and statuses through ``log_extra``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from codepercept_rl.rewards.backend import RewardBackend
from codepercept_rl.rewards.registry import Reward, get_reward
from codepercept_rl.rewards.types import RewardSample

log = logging.getLogger(__name__)

DEFAULT_COLUMNS = {
    "image": "image",
    "images": "images",
    "target_id": "target_id",
    "reference_code": "reference_code",
    "reference_caption": "reference_caption",
    "task": "task",
}


def image_to_png(image: Any) -> bytes | None:
    """PNG bytes of a dataset image: PIL image, encoded bytes (PNG, JPEG, ...), ``{"bytes": ...}`` (HF datasets'
    Image feature), or a list of those (the first). None for None.

    Raises:
        ValueError: an object that is not an image; OSError (PIL): bytes that do not decode as an image.
    """
    from PIL import Image

    if image is None:
        return None
    if isinstance(image, Mapping):
        return image_to_png(image.get("bytes"))
    if isinstance(image, list | tuple):
        return image_to_png(image[0]) if image else None
    if isinstance(image, bytes | bytearray):
        with Image.open(io.BytesIO(image)) as opened:
            if opened.format == "PNG":
                return bytes(image)
            image = opened.convert("RGB")  # JPEG and friends: re-encode, the reward service takes PNG
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise ValueError(f"cannot use a {type(image).__name__} as a target image")


class TRLReward:
    """An async TRL reward function (module docstring).

    Args:
        reward: the reward to compute.
        backend: a ``RewardPool`` or ``RewardClient``.
        name: ``__name__`` shown in TRL's logs (default: the reward's name).
        columns: overrides of ``DEFAULT_COLUMNS`` (our field -> dataset column).
    """

    def __init__(
        self,
        reward: Reward,
        backend: RewardBackend,
        *,
        name: str | None = None,
        columns: Mapping[str, str] | None = None,
    ) -> None:
        unknown = set(columns or {}) - set(DEFAULT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown column roles {sorted(unknown)}; known: {sorted(DEFAULT_COLUMNS)}")
        self.reward = reward
        self.backend = backend
        self.columns = {**DEFAULT_COLUMNS, **(columns or {})}
        self.__name__ = name or reward.name

    @classmethod
    def from_url(
        cls,
        url: str | Sequence[str],
        reward: str = "codepercept",
        weights: Mapping[str, float] | None = None,
        **options: Any,
    ) -> TRLReward:
        """A TRLReward over remote reward services (``python -m reward_servers.server``)."""
        from reward_servers.client import RewardClient

        return cls(get_reward(reward, weights, **options), RewardClient(url))

    def samples(self, completions: Sequence[Any], columns: Mapping[str, Any]) -> list[RewardSample]:
        """RewardSamples from TRL's completions and column lists."""
        n = len(completions)

        def column(role: str) -> list[Any]:
            values = columns.get(self.columns[role])
            return list(values) if isinstance(values, Sequence) and len(values) == n else [None] * n

        images = column("image")
        if all(v is None for v in images):
            images = column("images")
        target_ids, tasks = column("target_id"), column("task")
        references, captions = column("reference_code"), column("reference_caption")
        pngs: dict[int, bytes | None] = {}  # a group shares one image object: encode it once
        errors: dict[int, str] = {}
        samples = []
        for i, completion in enumerate(completions):
            image = images[i]
            if id(image) not in pngs:
                try:
                    pngs[id(image)] = image_to_png(image)
                except (ValueError, OSError) as exc:
                    # One unusable image must not stop the step: the sample goes on without it (the reward
                    # then compares with the reference render, or reports no_reference).
                    pngs[id(image)], errors[id(image)] = None, str(exc)
                    log.warning("sample %d: target image ignored: %s", i, exc)
            samples.append(
                RewardSample(
                    completion=completion,
                    task=tasks[i] or "code",
                    target_id=target_ids[i] if pngs[id(image)] is None else None,
                    target_png=pngs[id(image)],
                    reference_code=references[i],
                    reference_caption=captions[i],
                    extra={"target_error": errors[id(image)]} if id(image) in errors else {},
                )
            )
        return samples

    async def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None, **kwargs: Any
    ) -> list[float | None]:
        """One score (or None) per completion; components to ``log_metric``, statuses to ``log_extra``."""
        samples = self.samples(completions, kwargs)
        out = await self.reward(samples, self.backend)
        log_metric, log_extra = kwargs.get("log_metric"), kwargs.get("log_extra")
        if callable(log_metric):
            for key, value in out.summary(prefix=self.__name__).items():
                log_metric(key, value)
        if callable(log_extra):
            log_extra(f"{self.__name__}/status", list(out.statuses))
        return list(out.scores)
