"""The S1 job: supervised fine-tuning on image -> caption / image -> code conversations.

    codepercept-rl sft recipes/s1_tiny_cpu.yaml [key=value ...] [--resume]
    torchrun --nproc-per-node 8 -m codepercept_rl.jobs.sft recipes/s1_qwen3vl_4b.yaml

Reads top to bottom: ``setup`` (config, process group, model, data, tracker, reward pool) -> ``train``
(one optimizer step per global batch; validation loss and a generation check every ``trainer.test_freq``
steps; a checkpoint every ``trainer.save_freq``) -> ``cleanup``. Loss is on assistant tokens only, averaged
over all target tokens of the global batch. The generation check greedy-decodes ``sft.gen_num_samples``
held-out ``code`` rows, split over the ranks (each generates its share with the FSDP2-sharded model, all in
lock-step), and runs each answer in a sandbox of its rank's reward pool (``reward.num_workers`` per rank; never
in this process); the scored answers are gathered for the metrics and rank 0's table: ``val/exec_rate`` is
the share that rendered a figure, ``val/render_score`` the mean render reward against the row's image. Rows are
indexed up front and built (images decoded and processed) only when a rank's batch needs them
(:class:`~codepercept_rl.data.S1Dataset`).

Writes ``<trainer.default_local_dir>/<trainer.experiment_name>/``: ``config.yaml``, ``metrics.jsonl`` (step 0
is the baseline validation), ``checkpoints/step_*``, ``tables/val_generations`` and, at the end, ``hf/`` (a
plain Hugging Face folder: the input of R1).

Ranks: one per GPU. Under ``torchrun`` every process runs :func:`run_rank`; otherwise ``sft.num_processes``
ranks are started here, as Ray actors (``ray.enabled=true``) or local processes; each rank trains on
``cuda:LOCAL_RANK``. Before the model is built, a run whose training state (fp32 weights, gradients and AdamW
moments, sharded over the ranks: :func:`state_bytes_per_rank`) would not fit a rank's GPU is refused.

Resuming: ``--resume`` continues from the newest complete checkpoint in ``<run_dir>/checkpoints`` (an error if
there is none); ``trainer.resume_mode=auto`` (the default) does the same when one exists. Everything the next
steps depend on (weights, optimizer, schedule, RNG, data position) is restored, so on CPU a resumed run logs the
same losses as an uninterrupted one. A checkpoint also carries its step's metrics: a job stopped after the
checkpoint but before the metrics line writes that line when it resumes, so every step is logged once.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from PIL import Image
from torch.distributed.fsdp import FSDPModule

from codepercept_rl.config import JobConfig, load_config, to_dict
from codepercept_rl.config.schema import ModelConfig
from codepercept_rl.data import (
    S1Dataset,
    S1Example,
    collate,
    global_batches,
    mixture_order,
    padding_share,
    rank_micro_batches,
)
from codepercept_rl.data.batching import lockstep_shard
from codepercept_rl.errors import UserError
from codepercept_rl.learner import Learner, LearnerConfig, sft_loss
from codepercept_rl.learner import checkpoint as ckpt
from codepercept_rl.learner.dist import init_distributed, resolve_device
from codepercept_rl.plan import check_placement
from codepercept_rl.rollout import HFRolloutEngine, RolloutPrompt, SamplingParams
from codepercept_rl.tracking import Tracker, read_metrics
from codepercept_rl.utils.run import prepare_run_dir, seed_everything

if TYPE_CHECKING:
    from reward_servers.pool import RewardPool

log = logging.getLogger("codepercept_rl.sft")


@dataclass
class SFTRun:
    """Everything one rank holds during the job."""

    cfg: JobConfig
    run_dir: Path
    learner: Learner
    train: S1Dataset
    val: S1Dataset | None
    total_steps: int
    batches_per_epoch: int
    tracker: Tracker | None = None  # rank 0 only
    pool: RewardPool | None = None  # every rank, when the generation check is on: each scores its own share
    summary: dict[str, Any] = field(default_factory=dict)
    _epoch_batches: dict[int, list[list[int]]] = field(default_factory=dict)

    @property
    def ckpt_root(self) -> Path:
        """Where checkpoints go."""
        return self.run_dir / "checkpoints"

    def batch(self, step: int) -> list[int]:
        """The global batch (example indices) of 0-based optimizer step ``step``: a pure function of the step."""
        epoch, i = divmod(step, self.batches_per_epoch)
        if epoch not in self._epoch_batches:
            cfg = self.cfg
            order = mixture_order(
                self.train.tasks, cfg.sft.task_ratio, cfg.trainer.seed, epoch, cfg.data.shuffle
            )
            self._epoch_batches = {epoch: global_batches(order, self.cfg.data.train_batch_size)}
        return self._epoch_batches[epoch][i]


# --------------------------------------------------------------------------------------------------------------
# setup


def setup(cfg: JobConfig, resume: bool = False) -> SFTRun:
    """Builds this rank's learner, datasets, tracker and reward pool, and restores a checkpoint if asked.

    Raises:
        UserError: a missing data file, batch sizes that do not fit the data or the ranks, ``--resume``
            without a checkpoint.
    """
    seed_everything(cfg.trainer.seed, cfg.trainer.torch_num_threads)
    run_dir = Path(cfg.trainer.default_local_dir) / cfg.trainer.experiment_name
    check_inputs(cfg)
    try:
        info = init_distributed(cfg.trainer.device)  # this rank's device: cuda:LOCAL_RANK on GPUs
        check_state_memory(cfg.model, info.world_size, info.device)  # before a model too big for it is built
        # The schedule's length is known only once the data is read (below: set_total_steps).
        learner = Learner(_learner_config(cfg, total_steps=1), dist_info=info)
    except ValueError as e:
        raise UserError(str(e)) from None
    rank, world = learner.dist.rank, learner.dist.world_size
    if learner.dist.is_main:
        prepare_run_dir(run_dir, cfg)
    read = {"max_length": cfg.sft.max_length, "strict": cfg.data.strict, "image_key": cfg.data.image_key}
    train = S1Dataset(cfg.data.train_files, learner.processor, **read)
    val = S1Dataset(cfg.data.val_files, learner.processor, **read) if cfg.data.val_files else None
    unused = sorted(set(train.tasks) - set(cfg.sft.task_ratio)) if cfg.sft.task_ratio else []
    if unused:
        log.warning("sft.task_ratio does not name task(s) %s: their training rows are not used", unused)
    batch = cfg.data.train_batch_size
    if batch % world:
        raise UserError(f"data.train_batch_size={batch} does not split over {world} ranks")
    per_epoch = len(train) // batch
    if per_epoch < 1:
        raise UserError(f"data.train_batch_size={batch} is larger than the {len(train)} usable training rows")
    if val is not None and len(val) < world:
        raise UserError(f"{len(val)} usable validation rows for {world} ranks; give at least one per rank")
    total = cfg.trainer.total_training_steps or cfg.trainer.total_epochs * per_epoch
    learner.set_total_steps(total)
    run = SFTRun(cfg, run_dir, learner, train, val, total, per_epoch)
    latest = ckpt.latest_checkpoint(run.ckpt_root)
    if resume and latest is None:
        raise UserError(f"--resume: no complete checkpoint under {run.ckpt_root}")
    if latest is not None and not resume and cfg.trainer.resume_mode == "disable":
        # Starting over next to an old run's checkpoints would mix the two when old ones are pruned or resumed.
        raise UserError(
            f"trainer.resume_mode=disable but {run.ckpt_root} holds checkpoints of an earlier run; "
            "choose another trainer.experiment_name or delete that folder"
        )
    unlogged: dict[str, float] = {}
    if latest is not None and (resume or cfg.trainer.resume_mode == "auto"):
        extra = learner.load_checkpoint(latest)
        if extra.get("batches_per_epoch") != per_epoch:
            log.warning("data changed since the checkpoint (%s batches/epoch, now %d): resuming by step count",
                        extra.get("batches_per_epoch"), per_epoch)  # fmt: skip
        unlogged = dict(extra.get("metrics") or {})
    if learner.dist.is_main:
        run.tracker = Tracker(
            run_dir, project=cfg.trainer.project_name, experiment=cfg.trainer.experiment_name,
            backends=cfg.tracking.backends, config=to_dict(cfg), wandb_mode=cfg.tracking.wandb_mode,
            group=cfg.tracking.wandb_group, job_type="sft", tags=cfg.tracking.wandb_tags,
        )  # fmt: skip
        if unlogged and learner.step not in _logged_steps(run_dir):
            log.info("step %d was checkpointed but not logged (the job stopped between the two): logging it now",
                     learner.step)  # fmt: skip
            run.tracker.log(unlogged, step=learner.step)
    if val is not None and cfg.sft.gen_num_samples > 0:
        run.pool = _start_pool(cfg)
    counts = train.skipped + val.skipped if val is not None else train.skipped
    skipped = {f"data/skipped_{k}": v for k, v in counts.items()}
    run.summary.update(train_rows=len(train), val_rows=len(val) if val else 0, world_size=world, **skipped)
    log.info("rank %d/%d: %d train rows (%d skipped), %d steps from step %d", rank, world, len(train),
             sum(train.skipped.values()), total, learner.step)  # fmt: skip
    return run


def check_inputs(cfg: JobConfig) -> None:
    """The checks that need neither a model nor data (run before ranks are started, and again in each).

    Raises:
        UserError: no training file, a file that does not exist, a nonsensical size.
    """
    if not cfg.data.train_files:
        raise UserError(
            "data.train_files is empty: give the S1 JSONL export, e.g. data.train_files=[s1/train.jsonl]"
        )
    for f in [*cfg.data.train_files, *cfg.data.val_files]:
        if not Path(f).is_file():
            raise UserError(f"S1 file not found: {f}")
    if cfg.sft.max_length < 2:
        raise UserError(f"sft.max_length must be >= 2, got {cfg.sft.max_length}")
    if cfg.sft.num_processes < 1:
        raise UserError(f"sft.num_processes must be >= 1, got {cfg.sft.num_processes}")


# Training state per parameter: an fp32 master weight for every one; an fp32 gradient and AdamW's two fp32
# moments for each trainable one (a frozen vision tower has neither: the optimizer skips it).
WEIGHT_BYTES = 4
TRAINABLE_BYTES = 4 + 8


def state_bytes_per_rank(params: int, trainable: int, world_size: int) -> int:
    """Bytes of training state one rank holds: ``ceil((4 * params + 12 * trainable) / world_size)``.

    fp32 weights of all ``params``, fp32 gradients and AdamW moments of the ``trainable`` ones, sharded over
    ``world_size`` ranks by FSDP2. Activations, the transient unsharded bf16 blocks and the CUDA context come on
    top, so a run this estimate fits may still run out of memory; one it does not fit surely does.
    """
    return -(-(WEIGHT_BYTES * params + TRAINABLE_BYTES * trainable) // world_size)


def parameter_counts(model: ModelConfig) -> tuple[int, int] | None:
    """``(parameters, trainable parameters)`` of ``model.path``'s model, built on the meta device from its
    config (nothing allocated, no weight read); None for a tiny preset (``model.path`` unset)."""
    if not model.path:
        return None
    from transformers import AutoConfig, AutoModelForImageTextToText

    from codepercept_rl.learner.fsdp import freeze_vision_tower

    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model.path))
    params = sum(p.numel() for p in skeleton.parameters())
    frozen = freeze_vision_tower(skeleton) if model.freeze_vision_tower else 0
    return params, params - frozen


def check_state_memory(model: ModelConfig, world_size: int, device: torch.device) -> None:
    """Refuses a run whose training state per rank exceeds ``device``'s memory (CUDA; elsewhere it only logs).

    Raises:
        UserError: the estimate (:func:`state_bytes_per_rank`) is larger than the GPU.
    """
    counts = parameter_counts(model)
    if counts is None:
        return
    need = state_bytes_per_rank(*counts, world_size)
    have = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    refuse_state_memory(*counts, world_size, need, have, str(device))
    log.info("training state: %.1f GiB per rank (%d parameters, %d trainable, %d rank(s))", need / 2**30,
             *counts, world_size)  # fmt: skip


def refuse_state_memory(
    params: int, trainable: int, world_size: int, need: int, have: int | None, device: str
) -> None:
    """Raises when ``need`` bytes of state per rank exceed ``have`` (None: no device memory to compare with).

    Raises:
        UserError: one line with the estimate, the device's memory and what to change.
    """
    if have is None or need <= have:
        return
    raise UserError(
        f"S1 training state needs {need / 2**30:.1f} GiB per rank ({params / 1e9:.2f}B parameters, "
        f"{trainable / 1e9:.2f}B trainable: fp32 weights + grads + AdamW moments over {world_size} rank(s)) but "
        f"{device} has {have / 2**30:.1f} GiB; run one rank per GPU (sft.num_processes=N, or torchrun "
        "--nproc-per-node N) over enough GPUs"
    )


def _learner_config(cfg: JobConfig, total_steps: int) -> LearnerConfig:
    return LearnerConfig(
        model=cfg.model, optim=cfg.actor.optim, total_steps=total_steps, grad_clip=cfg.actor.grad_clip,
        seed=cfg.trainer.seed, device=cfg.trainer.device,
    )  # fmt: skip


def _start_pool(cfg: JobConfig) -> RewardPool:
    from reward_servers.pool import RewardPool
    from reward_servers.sandbox import SandboxConfig

    return RewardPool(
        workers=cfg.reward.num_workers, config=SandboxConfig(timeout_s=cfg.reward.timeout_s)
    ).start()


# --------------------------------------------------------------------------------------------------------------
# train


def _logged_steps(run_dir: Path) -> set[int]:
    """The steps ``run_dir/metrics.jsonl`` has a line for (none without the file)."""
    try:
        return {int(r["step"]) for r in read_metrics(run_dir)}
    except FileNotFoundError:
        return set()


def train(run: SFTRun) -> None:
    """Optimizer steps from the learner's current step to ``run.total_steps``, with validation and saves."""
    cfg, learner = run.cfg, run.learner
    rank, world = learner.dist.rank, learner.dist.world_size
    tok = learner.processor.tokenizer
    lengths = run.train.lengths
    if run.val is not None and learner.step == 0:  # the baseline the run's validation curve starts from
        metrics = validate(run)
        run.summary.update({f"{k}_initial": v for k, v in metrics.items() if k.startswith("val/")})
        if run.tracker is not None:
            run.tracker.log(metrics, step=0)
    while learner.step < run.total_steps:
        t0 = time.perf_counter()
        step = learner.step  # 0-based index of the step about to run
        batch = run.batch(step)
        mb_indices = rank_micro_batches(
            batch, lengths, rank, world, cfg.actor.ppo_micro_batch_size_per_device, cfg.sft.group_by_length
        )
        micro = [collate([run.train[i] for i in idx], tok.pad_token_id, learner.processor.image_token_id)
                 for idx in mb_indices]  # fmt: skip
        # The normaliser is global and needs no collective (nor the other ranks' rows): every rank's index has
        # the target-token count of every row.
        targets = float(sum(run.train.targets[i] for i in batch))
        stats = learner.train_step(micro, sft_loss, normalizer=targets)
        dt = time.perf_counter() - t0
        real_tokens = sum(lengths[i] for i in batch)
        pad, slots = padding_share(mb_indices, lengths)
        metrics = {
            "train/loss": stats["loss"], "train/grad_norm": stats["grad_norm"], "train/lr": stats["lr"],
            "train/target_tokens": targets, "train/padding_share": pad / slots,
            "train/epoch": step / run.batches_per_epoch, "timing_s/step": dt,
            "perf/tokens_per_s": real_tokens / dt,
        }  # fmt: skip
        if stats["skipped"]:
            metrics["train/skipped_update"] = 1
        done = learner.step
        last = done == run.total_steps
        if run.val is not None and (
            last or (cfg.trainer.test_freq > 0 and done % cfg.trainer.test_freq == 0)
        ):
            metrics.update(validate(run))
        logged = last or done % cfg.tracking.log_every == 0
        if last or (cfg.trainer.save_freq > 0 and done % cfg.trainer.save_freq == 0):
            t1 = time.perf_counter()
            epoch, i = divmod(done, run.batches_per_epoch)
            # The step's line is written after its checkpoint: the checkpoint carries it, and a run killed
            # between the two writes it when it resumes (``setup``).
            extra = {"epoch": epoch, "batch_in_epoch": i, "batches_per_epoch": run.batches_per_epoch,
                     "metrics": {k: float(v) for k, v in metrics.items()} if logged else {}}  # fmt: skip
            learner.save_checkpoint(run.ckpt_root, extra=extra, keep=cfg.trainer.max_actor_ckpt_to_keep)
            metrics["timing_s/save"] = time.perf_counter() - t1
        if run.tracker is not None and logged:
            run.tracker.log(metrics, step=done)
        run.summary.update({k: v for k, v in metrics.items() if k.startswith(("train/loss", "val/"))})
    run.summary.update(_masked_counts(run))
    if cfg.sft.export_hf:
        learner.export_hf(run.run_dir / "hf")


def validate(run: SFTRun) -> dict[str, float]:
    """Validation loss (target-token mean over all held-out rows) and the generation check; every rank."""
    assert run.val is not None
    learner, cfg = run.learner, run.cfg
    t0 = time.perf_counter()
    # Every row once: longest first, dealt round-robin (ranks may differ by one row; the learner pads forwards).
    lengths = run.val.lengths
    ranked = sorted(range(len(run.val)), key=lambda i: -lengths[i])[
        learner.dist.rank :: learner.dist.world_size
    ]
    size = cfg.actor.ppo_micro_batch_size_per_device
    tok = learner.processor.tokenizer
    micro = [collate([run.val[i] for i in ranked[j : j + size]], tok.pad_token_id, learner.processor.image_token_id)
             for j in range(0, len(ranked), size)]  # fmt: skip
    targets = float(sum(run.val.targets))
    metrics = {
        "val/loss": learner.loss_sum(micro, sft_loss) / targets,
        "timing_s/val": time.perf_counter() - t0,
    }
    if cfg.sft.gen_num_samples > 0:
        metrics.update(generation_check(run))
    return metrics


def generation_check(run: SFTRun) -> dict[str, float]:
    """Greedy answers to held-out ``code`` rows, split over the ranks and run through their reward pools.

    Every rank generates its share with the sharded model. FSDP2 gathers a block's weights in the block's first
    forward (kept until the check ends, :func:`_kept_gathered`: not re-gathered for every token), so all ranks
    run their forwards together: ``generate(synced_gpus=True)`` keeps a rank that finished early stepping until
    all have, and shards are padded to equal counts, grouped so that each call runs the vision tower on all
    ranks or on none. One rank needs no gathering: it answers all rows in one batch with the plain module that
    shares the learner's weights, through the lean decode loop R1 and the evaluation use. Both paths go through
    ``HFRolloutEngine`` (vision placeholders suppressed, ``<|im_end|>`` an end token), so they give the same
    answers. Each rank scores and renders its answers in its own pool; the results are gathered, in row order,
    for the metrics (every rank) and the table (rank 0).

    ``val/exec_rate``: share of answers whose code rendered a figure; ``val/render_score``: mean render
    reward against the row's image (the pool's default ``render`` reward, 0 when the code failed).
    """
    assert run.val is not None and run.pool is not None
    t0 = time.perf_counter()
    learner, cfg = run.learner, run.cfg
    world = learner.dist.world_size
    rows = [i for i, task in enumerate(run.val.tasks) if task == "code"][: cfg.sft.gen_num_samples]
    if not rows:  # the same on every rank: all return before any collective
        return {}
    calls = lockstep_shard([run.val.n_images[i] > 0 for i in rows], learner.dist.rank, world)
    model = learner.rollout_model() if world == 1 else learner.model.eval()
    # One rank: all rows in one batch through the lean decode loop (R1's and the evaluation's engine). Several:
    # one row per call, every rank at once (generate(synced_gpus=True) over the sharded model).
    engine = HFRolloutEngine(
        model, learner.processor, micro_batch_size=max(len(calls), 1), synced_gpus=world > 1
    )
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=cfg.sft.gen_max_new_tokens)
    batches = [calls] if world == 1 else [[call] for call in calls]
    answers: list[tuple[int, S1Example, str]] = []  # (position in rows, row, completion)
    try:
        with _kept_gathered(learner.model) if world > 1 else contextlib.nullcontext():
            for batch in batches:
                examples = [run.val[rows[pos]] for pos, _ in batch]
                outs = engine.generate([_generation_prompt(e) for e in examples], greedy)
                answers += [(pos, e, out[0].text) for (pos, counted), e, out in zip(batch, examples, outs, strict=True)
                            if counted]  # fmt: skip
    finally:
        learner.model.train()
    # The row's image is the target: the pool runs the code in its sandbox and compares the render with it.
    items = [{"code": c, "target_png": _png(e.images[0])} if e.images else {"code": c, "reference_code": c}
             for _, e, c in answers]  # fmt: skip
    results = run.pool.score(items) if items else []
    # (position, id, target, render, score, status, completion): the target next to the answer's render (drawn
    # again in the sandbox), as R1's sample tables show them.
    scored = [
        (pos, e.id, item.get("target_png"), run.pool.render(c).png if r.status == "ok" else None, r.score,
         r.status, c[:2000])
        for (pos, e, c), item, r in zip(answers, items, results, strict=True)
    ]  # fmt: skip
    run.summary["val_gen_rows_this_rank"] = len(scored)
    if world > 1:
        shards: list[Any] = [None] * world
        dist.all_gather_object(shards, scored)
        scored = [entry for shard in shards for entry in shard]
    scored.sort(key=lambda entry: entry[0])
    if run.tracker is not None:
        run.tracker.log_table("val_generations", ["id", "target", "render", "score", "status", "completion"],
                              [entry[1:] for entry in scored], step=learner.step)  # fmt: skip
    ok = [entry[5] == "ok" for entry in scored]
    return {
        "val/exec_rate": sum(ok) / len(ok), "val/render_score": sum(entry[4] for entry in scored) / len(scored),
        "val/gen_samples": len(ok), "timing_s/gen": time.perf_counter() - t0,
    }  # fmt: skip


def _generation_prompt(e: S1Example) -> RolloutPrompt:
    """Row ``e``'s prompt: its conversation up to its last assistant turn, with its images."""
    last = max(i for i, m in enumerate(e.messages) if m["role"] == "assistant")
    return RolloutPrompt(list(e.messages[:last]), list(e.images))


@contextlib.contextmanager
def _kept_gathered(model: torch.nn.Module) -> Iterator[None]:
    """Keeps each FSDP2 block's weights gathered after its forward (``reshard_after_forward=False``), as a
    plain module would hold them, and shards them again on exit (blocks reshard after forward again; the root
    keeps FSDP2's default of not doing so). Generation then gathers each block once per check, not once per
    token; the price is one compute-dtype copy of the model per rank meanwhile."""
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
            if m is not model:
                m.set_reshard_after_forward(True, recurse=False)


def _masked_counts(run: SFTRun) -> dict[str, int]:
    """``data/masked_<reason>``: rows whose images failed to decode when a rank fetched them, counted once over
    all ranks (a collective)."""
    datasets = [run.train] if run.val is None else [run.train, run.val]
    local = {(d, i, reason) for d, ds in enumerate(datasets) for i, reason in ds.masked.items()}
    if run.learner.dist.world_size > 1:
        shards: list[Any] = [None] * run.learner.dist.world_size
        dist.all_gather_object(shards, local)
        local = set().union(*shards)
    counts: dict[str, int] = {}
    for _, _, reason in local:
        counts[f"data/masked_{reason}"] = counts.get(f"data/masked_{reason}", 0) + 1
    return counts


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------
# cleanup


def cleanup(run: SFTRun) -> None:
    """Closes the reward pool and the tracker (with the run's summary)."""
    if run.pool is not None:
        run.pool.close()
    if run.tracker is not None:
        run.tracker.summary(run.summary)
        run.tracker.finish()


def run_rank(cfg: JobConfig, resume: bool = False) -> dict[str, Any]:
    """The whole job on this rank (torchrun process, Ray actor or the only process); returns the summary."""
    from codepercept_rl.learner.dist import destroy_distributed

    if not logging.getLogger().handlers:  # here, not in main: spawned ranks and Ray actors start bare
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run = setup(cfg, resume)
        try:
            train(run)
        finally:
            cleanup(run)
    finally:
        destroy_distributed()  # also after a refused set-up: the process group must not outlive the job
    return run.summary


# --------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``codepercept-rl sft RECIPE [overrides] [--resume]``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="codepercept-rl sft", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a YAML recipe, e.g. recipes/s1_tiny_cpu.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. actor.optim.lr=1e-5")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint (must exist)"
    )
    args = parser.parse_args(argv)
    cfg = load_config(args.recipe, args.overrides, schema=JobConfig)
    check_inputs(cfg)  # here too: a user mistake fails in one line before any rank starts
    if "WORLD_SIZE" in os.environ or cfg.sft.num_processes == 1:
        run_rank(cfg, resume=args.resume)
        return 0
    from codepercept_rl.learner.actor import run_on_ranks

    if not cfg.ray.enabled:  # local ranks share this machine's GPUs: refuse here, in one line, not in N ranks
        try:
            device = resolve_device(cfg.trainer.device)
        except ValueError as e:
            raise UserError(str(e)) from None
        check_state_memory(cfg.model, cfg.sft.num_processes, device)
    check_placement(cfg, "s1")  # with Ray: refuse in one line a cluster with too few GPUs
    gpus = 1.0 if cfg.trainer.device == "cuda" else 0.0  # Ray gives each rank actor its own GPU
    run_on_ranks(run_rank, cfg.sft.num_processes, cfg, args.resume, ray_cfg=cfg.ray, num_gpus_per_rank=gpus)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
