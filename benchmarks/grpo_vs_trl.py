"""One GRPO step of this engine vs TRL's GRPOTrainer (``use_vllm=False``) on CPU, side by side in one run.

Run (a few minutes on 2 cores; an otherwise idle machine gives clean figures)::

    python benchmarks/grpo_vs_trl.py                          # small preset, 2 prompts x G=4, 64 new tokens
    python benchmarks/grpo_vs_trl.py --preset tiny --steps 5 --repeats 3 --ray  # also ours with Ray actors

The last line is ``grpo_step_ratio_vs_trl=<ours/TRL>``: the median seconds per GRPO step of our engine run
in-process (``ray.enabled=false``) divided by TRL's median. Below 1 means ours is faster.

``--one-step-off`` also times ours as verl's one-step-off-policy recipe runs (``trainer.one_step_off_policy``
on the split placement, Ray actors, the engine's log-probs as the old ones:
``algorithm.rollout_correction.bypass_mode``): the rollout actor samples the next step's batch on one core while
the learner updates on the other, so a step costs about the longer of the two instead of their sum. Its rollouts
are one policy version old, which TRL's are not, so it prints a ratio of its own
(``grpo_step_ratio_vs_trl_one_step_off``) before the headline; its ``wait_rollout`` phase is the generation the
update did not hide, ``gen_overlapped`` the whole generation (beside the previous step, not in the step's time).

What is the same on both sides:

- the model: one tiny Qwen2.5-VL (``codepercept_rl.models.build_tiny_model``, random weights, seeded), saved
  once and loaded from that folder by both engines, fp32, no gradient checkpointing, no dropout in the model;
- the data: one R1 parquet of ``shapes`` programs rendered in the sandbox; ours reads the parquet, TRL gets the
  same rows as a dataset with a conversational prompt (``{"type": "image"}`` + the same text) and a PIL
  ``image`` column; both shuffle with their own sampler;
- per step: ``--prompts`` prompts x ``--group-size`` completions, ``--max-new-tokens``, temperature 1.0,
  top-p 1.0, no top-k, repetition penalty 1.0, all completions generated in one ``generate`` batch;
- the reward: ``render_similarity`` on a local ``RewardPool`` of ``--reward-workers`` sandboxes (ours through
  its reward worker, TRL through ``TRLReward`` around the same reward and pool kind); random weights produce
  mostly unparseable code, so most samples end in the sandbox's ``syntax_error``/``no_code`` path: the step
  pays for real sandbox round trips but few full renders (the status counts are printed);
- the algorithm: beta 0 (no reference model), one PPO epoch / ``num_iterations=1``, clip 0.2 both ways,
  token-mean loss (TRL ``loss_type="dapo"``), group-std-normalised advantages (``scale_rewards="group"``),
  one optimizer step per GRPO step (AdamW foreach, lr ``--lr`` constant, weight decay 0, grad clip 1.0);
- the update is on-policy on both sides, and neither runs a separate forward for the sampling policy's
  log-probs: TRL skips it with ``num_iterations=1``; ours (``actor.recompute_log_prob=false``, one epoch over
  one mini-batch) uses the update's own log-probs, detached, as the old ones;
- both generate with the weights being trained, in the training process: ours colocated
  (``rollout.hybrid_engine=true``: the rollout module's parameters are views of the learner's one-rank FSDP2
  shards, so ``update_weights`` only re-binds them), TRL with the trained model itself;
- both score only the completion tokens: TRL masks the prompt out of the labels of its fused LM head, ours
  computes logits from the first completion column on (``logits_to_keep``);
- torch uses 1 thread; warm-up steps are excluded; each engine runs ``--repeats`` fresh runs, each in its own
  Python process (no engine inherits the other's process group, sandboxes or allocator state), interleaved
  (ours, TRL, ours, TRL, ...) so that load from other work on the machine hits both alike.

What is not the same (and is part of what is measured):

- ours trains the model wrapped by FSDP2 in a one-rank gloo group (the same code path as N ranks), TRL the
  plain module; ours also computes the entropy of the sampling policy in the update's forward (TRL computes
  its entropies there too);
- ours runs each prompt once for its group, TRL once per completion: in generation (the lean decode loop
  prefills a prompt once and copies its KV cache to its G samples, ``rollout/hf.py``) and in the update's forward
  (the recipe's ``actor.use_prefix_grouper=true``: one row ``[prompt | response 1 | ... | response G]`` with a
  mask that keeps the responses apart, ``learner/prefix_grouper.py``); the log-probs and gradients are those
  of the repeated rows (its tests check this), the compute is not. ``--ours-override
  actor.use_prefix_grouper=false`` times ours without the latter;
- ours registers the target images with the reward pool once; TRL's reward sends the target PNG per call;
- seconds/step of ours is the wall time of ``grpo_step`` plus logging its metrics; of TRL the time between
  consecutive ``on_step_end`` callbacks (its dataloader, ``training_step``, optimizer step and logging).
  Per-phase figures: ours from its ``timing_s/*`` metrics; TRL's from a stopwatch around its own methods
  (``trl_phases``), which only times them; TRL's own ``step_time`` log is printed too (it leaves out the
  optimizer step);
- sampled completions differ (different RNG use), so response lengths may differ: the mean lengths are
  printed next to the timings.

Setup (model build, parquet, ``setup``/``GRPOTrainer`` construction, Ray start) is never timed. Not compared:
learning (random weights, a handful of steps), memory, multi-rank or GPU runs, vLLM rollouts.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

RECIPE = REPO / "recipes" / "r1_tiny_cpu.yaml"
PROMPT_TEXT = "Write Python matplotlib code that draws exactly this picture."
PHASES = ("gen", "reward", "old_log_prob", "adv", "update_actor", "wait_rollout", "update_weights")
# --one-step-off only: the prefetched round's generation, run beside the previous step's update (not in the step)
OVERLAPPED = ("gen_overlapped",)
ASYNC_NAME = "ours (1-off)"
# --one-step-off: verl's one-step-off-policy recipe on the split placement, with the engine's log-probs as the old
# ones (no old_log_prob forward); everything else as the on-policy run's settings.
ONE_STEP_OFF = ("rollout.hybrid_engine=false", "trainer.one_step_off_policy=true",
                "algorithm.rollout_correction.bypass_mode=true")  # fmt: skip


@dataclass
class EngineResult:
    """Timed steps of one engine over its repeats."""

    name: str
    settings: str
    step_s: list[list[float]] = field(default_factory=list)  # one list of timed steps per repeat
    phases: dict[str, list[float]] = field(default_factory=dict)  # ours: timing_s/*; TRL: trl_phases
    lengths: list[float] = field(default_factory=list)  # mean completion length of each timed step
    statuses: Counter = field(default_factory=Counter)  # reward statuses of timed steps (ours)
    own_step_s: list[float] = field(default_factory=list)  # TRL's own ``step_time`` log (no optimizer step)

    @property
    def median_s(self) -> float:
        """Median seconds/step over all timed steps of all repeats."""
        return statistics.median(s for rep in self.step_s for s in rep)

    def add(self, other: dict[str, Any]) -> None:
        """Merges one repeat, as written by a worker process (``dataclasses.asdict`` of an EngineResult)."""
        self.step_s.extend(other["step_s"])
        for phase, values in other["phases"].items():
            self.phases.setdefault(phase, []).extend(values)
        self.lengths.extend(other["lengths"])
        self.statuses.update(other["statuses"])
        self.own_step_s.extend(other["own_step_s"])


# ------------------------------------------------------------------------------------------------ assets
def build_assets(root: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The shared model folder and R1 parquet (targets rendered in the sandbox). Returns (model, parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from codepercept_rl.models import build_tiny_model
    from data_tools.generators import generate
    from reward_servers.sandbox import Sandbox, SandboxConfig

    model_dir = root / "model"
    build_tiny_model("qwen2_5_vl", args.preset, out_dir=model_dir, seed=args.seed)
    rows = []
    with Sandbox(SandboxConfig(timeout_s=20)) as sandbox:
        for index in range(args.items):
            program = generate("shapes", index)
            render = sandbox.run(program.code)
            if render.status != "ok":
                raise RuntimeError(
                    f"shapes seed {index}: target render failed ({render.status}): {render.error}"
                )
            rows.append(
                {
                    "data_source": "codepercept/shapes",
                    "prompt": [{"role": "user", "content": "<image>" + PROMPT_TEXT}],
                    "images": [{"bytes": render.png}],
                    "ability": "perception",
                    "reward_model": {"style": "rule", "ground_truth": program.code},
                    "extra_info": {
                        "index": index,
                        "item_id": f"shapes-{index}",
                        "target_id": f"shapes-{index}",
                    },
                }
            )
    parquet = root / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    return model_dir, parquet


# ------------------------------------------------------------------------------------------------ ours
def our_config(
    args: argparse.Namespace,
    root: Path,
    model_dir: Path,
    parquet: Path,
    ray: bool,
    one_step_off: bool = False,
) -> Any:
    """Our JobConfig with the settings shared with TRL (module docstring)."""
    from codepercept_rl.config import JobConfig, load_config

    batch = args.prompts * args.group_size
    overrides = [
        f"trainer.default_local_dir={root / 'runs'}",
        f"trainer.experiment_name=ours_{'ray' if ray else 'local'}_{time.monotonic_ns()}",
        f"trainer.seed={args.seed}",
        f"trainer.total_training_steps={args.warmup + args.steps}",
        "trainer.val_before_train=false",
        "trainer.torch_num_threads=1",
        f"model.path={model_dir}",
        f"data.train_files=[{parquet}]",
        "data.val_files=[]",
        f"data.train_batch_size={args.prompts}",
        f"actor.ppo_mini_batch_size={args.prompts}",  # one optimizer step per GRPO step
        f"actor.ppo_micro_batch_size_per_device={batch}",  # no gradient accumulation, like TRL's batch
        "actor.ppo_epochs=1",
        f"actor.optim.lr={args.lr}",
        "actor.optim.weight_decay=0.0",
        "actor.optim.warmup_style=constant",
        "actor.clip_ratio_low=0.2",
        "actor.clip_ratio_high=0.2",
        "actor.loss_agg_mode=token-mean",
        "actor.grad_clip=1.0",
        "actor.use_kl_loss=false",
        "actor.recompute_log_prob=false",  # on-policy (one epoch, one mini-batch): no old_log_prob forward
        f"rollout.n={args.group_size}",
        "rollout.temperature=1.0",
        "rollout.top_p=1.0",
        f"rollout.response_length={args.max_new_tokens}",
        f"rollout.micro_batch_size={batch}",  # the whole step in one generate call, like TRL
        "rollout.hybrid_engine=true",  # colocated: generate with the learner's own parameters, like TRL
        "algorithm.norm_adv_by_std_in_grpo=true",
        "algorithm.filter_groups=false",
        "reward.name=render_similarity",
        f"reward.num_workers={args.reward_workers}",
        "tracking.backends=[jsonl]",
        f"ray.enabled={'true' if ray else 'false'}",
        "ray.num_cpus=2",
        *args.ours_override,
        *(ONE_STEP_OFF if one_step_off else ()),
    ]
    return load_config(RECIPE, overrides, schema=JobConfig)


def run_ours(args: argparse.Namespace, root: Path, model_dir: Path, parquet: Path, ray: bool,
             result: EngineResult, one_step_off: bool = False) -> None:  # fmt: skip
    """One fresh run of our engine: ``--warmup`` untimed steps, then ``--steps`` timed ones."""
    from codepercept_rl.jobs.train import cleanup, grpo_step, setup

    run = setup(our_config(args, root, model_dir, parquet, ray, one_step_off))
    times = []
    try:
        for k in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            metrics = grpo_step(run)
            run.step += 1
            run.tracker.log(metrics, step=run.step)
            elapsed = time.perf_counter() - t0
            if k < args.warmup:
                continue
            times.append(elapsed)
            result.lengths.append(metrics["response_length/mean"])
            for phase in PHASES + (OVERLAPPED if one_step_off else ()):
                result.phases.setdefault(phase, []).append(metrics.get(f"timing_s/{phase}", 0.0))
            for key, value in metrics.items():
                if key.startswith("reward/status/"):
                    result.statuses[key.removeprefix("reward/status/")] += int(value)
    finally:
        cleanup(run)
    result.step_s.append(times)


# ------------------------------------------------------------------------------------------------ TRL
def run_trl(
    args: argparse.Namespace, root: Path, model_dir: Path, parquet: Path, result: EngineResult
) -> None:
    """One fresh GRPOTrainer run with the same model, rows, sampling, reward and optimizer settings."""
    import datasets
    import pyarrow.parquet as pq
    from PIL import Image
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from codepercept_rl.config.schema import RewardConfig
    from codepercept_rl.models import load_model
    from codepercept_rl.rewards import make_backend
    from codepercept_rl.rewards.adapters.trl import TRLReward
    from codepercept_rl.rewards.registry import get_reward

    rows = pq.read_table(parquet).to_pylist()
    images = [Image.open(io.BytesIO(row["images"][0]["bytes"])).convert("RGB") for row in rows]
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT_TEXT}]}]
    train = datasets.Dataset.from_dict({"prompt": [prompt] * len(rows), "image": images})
    model, processor = load_model(model_dir)
    backend = make_backend(RewardConfig(name="render_similarity", num_workers=args.reward_workers))
    reward_fn = TRLReward(get_reward("render_similarity"), backend)

    class StepClock(TrainerCallback):
        """Wall time between consecutive optimizer-step ends (the first from the start of training), and the
        seconds spent in the trainer methods wrapped by :func:`time_methods` during each step."""

        def __init__(self) -> None:
            self.marks: list[float] = []
            self.spent: Counter = Counter()  # method name -> seconds, since the last step end
            self.per_step: list[dict[str, float]] = []

        def on_train_begin(self, *_: Any, **__: Any) -> None:
            self.marks, self.per_step = [time.perf_counter()], []
            self.spent.clear()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            self.marks.append(time.perf_counter())
            self.per_step.append(dict(self.spent))
            self.spent.clear()

    clock = StepClock()
    config = GRPOConfig(
        output_dir=str(root / "trl"), max_steps=args.warmup + args.steps, seed=args.seed,
        per_device_train_batch_size=args.prompts * args.group_size, num_generations=args.group_size,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
        beta=0.0, num_iterations=1, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        learning_rate=args.lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch",  # foreach AdamW, as ours (TRL's default is the fused kernel)
        gradient_checkpointing=False, use_cpu=True, bf16=False, report_to=[], save_strategy="no",
        logging_steps=1, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    try:
        trainer = GRPOTrainer(model=model, reward_funcs=[reward_fn], args=config, train_dataset=train,
                              processing_class=processor, callbacks=[clock])  # fmt: skip
        time_methods(trainer, TRL_TIMED, clock.spent)
        torch.set_num_threads(1)
        trainer.train()
    finally:
        backend.close()
    steps = [b - a for a, b in zip(clock.marks, clock.marks[1:], strict=False)]
    if len(steps) != args.warmup + args.steps:
        raise RuntimeError(f"TRL ran {len(steps)} steps, expected {args.warmup + args.steps}")
    result.step_s.append(steps[args.warmup :])
    for total, spent in list(zip(steps, clock.per_step, strict=True))[args.warmup :]:
        for phase, seconds in trl_phases(total, spent).items():
            result.phases.setdefault(phase, []).append(seconds)
    logs = [entry for entry in trainer.state.log_history if "completions/mean_length" in entry]
    result.lengths.extend(entry["completions/mean_length"] for entry in logs[args.warmup :])
    result.own_step_s.extend(entry["step_time"] for entry in logs[args.warmup :])


TRL_TIMED = (
    "_generate",
    "_calculate_rewards",
    "_generate_and_score_completions",
    "compute_loss",
    "training_step",
)


def time_methods(obj: Any, names: Sequence[str], spent: Counter) -> None:
    """Wraps the bound methods ``names`` of ``obj`` so that the seconds spent in each add up in ``spent``.

    Only a stopwatch around TRL's own code: the calls, arguments and results are unchanged.
    """
    for name in names:
        method = getattr(obj, name)

        def timed(*a: Any, _method: Any = method, _name: str = name, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _method(*a, **kw)
            finally:
                spent[_name] += time.perf_counter() - t0

        setattr(obj, name, timed)


def trl_phases(step_s: float, spent: Mapping[str, float]) -> dict[str, float]:
    """TRL's step cut into phases comparable with ours, from the wrapped methods' seconds.

    ``gen`` = ``_generate``; ``reward`` = ``_calculate_rewards``; ``prep_other`` = the rest of
    ``_generate_and_score_completions`` (tokenising, advantages); ``loss_fwd`` = ``compute_loss``;
    ``backward`` = ``training_step`` minus the two before it; ``optim_other`` = the rest of the step
    (optimizer and scheduler step, grad clipping, logging, dataloader).
    """
    gen, reward = spent.get("_generate", 0.0), spent.get("_calculate_rewards", 0.0)
    prepare, loss = spent.get("_generate_and_score_completions", 0.0), spent.get("compute_loss", 0.0)
    train = spent.get("training_step", 0.0)
    return {"gen": gen, "reward": reward, "prep_other": prepare - gen - reward, "loss_fwd": loss,
            "backward": train - prepare - loss, "optim_other": step_s - train}  # fmt: skip


# ------------------------------------------------------------------------------------------------ report
def report(
    args: argparse.Namespace, results: list[EngineResult], ours: EngineResult, trl: EngineResult
) -> None:
    """Prints the settings, per-phase timings of ours, the table of sec/step and the ratio (last line)."""
    print()
    print(f"model: tiny Qwen2.5-VL preset={args.preset} (fp32, random weights, seed {args.seed}); "
          f"torch threads=1; data: {args.items} shapes rows")  # fmt: skip
    print(f"per step: {args.prompts} prompts x G={args.group_size}, max_new_tokens={args.max_new_tokens}, "
          f"temperature=1.0 top_p=1.0; reward render_similarity on a RewardPool of {args.reward_workers} "
          f"sandboxes; beta=0, 1 epoch, 1 optimizer step, lr={args.lr}")  # fmt: skip
    print(f"timing: {args.warmup} warm-up step(s) dropped, then {args.steps} timed steps x {args.repeats} "
          "repeats per engine (interleaved); medians over all timed steps")  # fmt: skip
    print()
    for res in results:
        if res.phases:
            cells = "  ".join(f"{p}={statistics.median(v):.3f}" for p, v in res.phases.items())
            label = "phases (wrapped-method stopwatch)" if res.own_step_s else "timing_s/*"
            print(f"{res.name} median {label}: {cells}")
        if res.statuses:
            print(f"{res.name} reward statuses (timed steps): {dict(res.statuses)}")
        if res.own_step_s:
            print(f"{res.name} own step_time log (training_step only, no optimizer step), median: "
                  f"{statistics.median(res.own_step_s):.3f} s")  # fmt: skip
    print()
    header = f"{'engine':<14} {'sec/step (median)':>18} {'per repeat':>24} {'mean len':>9}  settings"
    print(header)
    print("-" * len(header))
    for res in results:
        per_rep = ", ".join(f"{statistics.median(rep):.3f}" for rep in res.step_s)
        length = statistics.fmean(res.lengths) if res.lengths else float("nan")
        print(f"{res.name:<14} {res.median_s:>18.3f} {per_rep:>24} {length:>9.1f}  {res.settings}")
    print()
    async_runs = [res for res in results if res.name == ASYNC_NAME]
    if async_runs:  # not the headline: its rollouts are one policy version old, TRL's are not
        print(f"grpo_step_ratio_vs_trl_one_step_off={async_runs[0].median_s / trl.median_s:.3f}")
    print(f"grpo_step_ratio_vs_trl={ours.median_s / trl.median_s:.3f}")


def run_worker(args: argparse.Namespace) -> None:
    """Worker mode: one repeat of one engine in this fresh process; the result goes to ``--out`` as JSON."""
    torch.set_num_threads(1)
    root = Path(args.root)
    result = EngineResult(args.worker, "")
    if args.worker == "trl":
        run_trl(args, root, root / "model", root / "train.parquet", result)
    else:
        run_ours(args, root, root / "model", root / "train.parquet", args.worker != "ours", result,
                 one_step_off=args.worker == "ours-async")  # fmt: skip
    # Counter is turned into a plain dict by hand: dataclasses.asdict would rebuild it from (key, value) pairs.
    Path(args.out).write_text(json.dumps({**dataclasses.asdict(result), "statuses": dict(result.statuses)}))


def spawn(engine: str, argv: list[str], root: Path, rep: int) -> dict[str, Any]:
    """Runs one repeat of ``engine`` in a fresh interpreter, so that no engine inherits the other's state
    (process groups, sandboxes, allocator, Ray); returns its result dict.

    Raises:
        RuntimeError: the worker failed; its log tail is in the message.
    """
    out, log_file = root / f"{engine}-{rep}.json", root / f"{engine}-{rep}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", engine, "--root", str(root),
           "--out", str(out)]  # fmt: skip
    print(f"repeat {rep + 1}: {engine} ...", end=" ", flush=True)
    t0 = time.perf_counter()
    with log_file.open("w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log_file.read_text()[-4000:]
        raise RuntimeError(f"{engine} worker (repeat {rep + 1}) exited with {proc.returncode}:\n{tail}")
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/grpo_vs_trl.py [--preset tiny] [--steps 4] ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=("nano", "tiny", "small"))
    parser.add_argument("--steps", type=int, default=4, help="timed GRPO steps per repeat")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first, per repeat")
    parser.add_argument("--repeats", type=int, default=2, help="fresh runs per engine, interleaved")
    parser.add_argument("--group-size", type=int, default=4, help="completions per prompt (G)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--items", type=int, default=8, help="rows in the shared data set")
    parser.add_argument("--reward-workers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ray", action="store_true", help="also time ours with Ray actors (not in the ratio)"
    )
    parser.add_argument("--ours-override", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra config override for our engine (e.g. model.use_remove_padding=true)")  # fmt: skip
    # internal: one repeat of one engine in a child process (see spawn)
    parser.add_argument("--one-step-off", action="store_true",
                        help="also time ours one step off-policy (Ray, split placement; a ratio of its own)")  # fmt: skip
    parser.add_argument("--worker", choices=("ours", "ours-ray", "ours-async", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--steps and --repeats must be >= 1, --warmup >= 0")
    if args.worker:
        run_worker(args)
        return 0

    shared = "same model/rows/G/tokens/sampling/reward/optimizer"
    ours = EngineResult("ours (local)", f"{shared}; ray.enabled=false")
    trl = EngineResult("TRL", f"{shared}; GRPOTrainer use_vllm=False, optim=adamw_torch")
    ours_ray = EngineResult("ours (Ray)", f"{shared}; ray.enabled=true, ray.num_cpus=2")
    ours_async = EngineResult(ASYNC_NAME, f"{shared}; Ray, {', '.join(ONE_STEP_OFF)}")
    engines = [("ours", ours), ("trl", trl), *([("ours-ray", ours_ray)] if args.ray else []),
               *([("ours-async", ours_async)] if args.one_step_off else [])]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="grpo_vs_trl_") as tmp:
        root = Path(tmp)
        build_assets(root, args)
        for rep in range(args.repeats):
            for engine, result in engines:
                result.add(spawn(engine, argv, root, rep))
    report(args, [result for _, result in engines], ours, trl)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
