"""The config sections every job shares, with verl's key names where the meaning is the same.

A job's config is a dataclass made of these sections (``JobConfig`` below holds them all; a job reads the
sections it needs). Sizes follow verl: algorithm sizes are global, per-device sizes say ``_per_device``.

verl name map (ours -> verl ``actor_rollout_ref.*`` / ``algorithm.*``)::

    model.path                       actor_rollout_ref.model.path
    actor.optim.lr                   actor_rollout_ref.actor.optim.lr
    actor.ppo_mini_batch_size        actor_rollout_ref.actor.ppo_mini_batch_size
    actor.clip_ratio_low/high/c      actor_rollout_ref.actor.clip_ratio_low/high/c
    actor.loss_agg_mode              actor_rollout_ref.actor.loss_agg_mode
    actor.kl_loss_coef/type          actor_rollout_ref.actor.kl_loss_coef/type
    rollout.n / temperature / top_p  actor_rollout_ref.rollout.n / temperature / top_p
    ref.fsdp_config.param_offload    actor_rollout_ref.ref.fsdp_config.param_offload
    algorithm.adv_estimator          algorithm.adv_estimator
    algorithm.kl_coef                algorithm.kl_ctrl.kl_coef (flattened: one coefficient, no controller)
    rollout.hybrid_engine            actor_rollout_ref.hybrid_engine
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# verl 0.9's KL estimators (``core_algos.kl_penalty``); "<name>+" keeps <name>'s value with k2's gradient.
KLEstimator = Literal[
    "kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3",
    "kl+", "k1+", "abs+", "mse+", "k2+", "low_var_kl+", "k3+",
]  # fmt: skip


@dataclass
class TrackingConfig:
    """Where metrics go. ``console`` prints a line per step, ``jsonl`` writes ``metrics.jsonl`` in the run dir,
    ``wandb`` logs to Weights & Biases (offline when no API key is set or the network is down)."""

    backends: list[Literal["console", "jsonl", "wandb"]] = field(default_factory=lambda: ["console", "jsonl"])
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    wandb_group: str | None = None
    wandb_tags: list[str] = field(default_factory=list)
    log_every: int = 1


@dataclass
class TrainerConfig:
    """Run-level settings (verl ``trainer.*``)."""

    project_name: str = "codepercept-rl"
    experiment_name: str = "run"
    default_local_dir: str = "runs"  # the run directory is <default_local_dir>/<experiment_name>
    total_training_steps: int | None = None
    total_epochs: int = 1
    seed: int = 0
    save_freq: int = -1  # steps between checkpoints; -1: only at the end
    test_freq: int = -1  # steps between validations; -1: only at the end
    resume_mode: Literal["auto", "disable"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_num_threads: int = 1  # intra-op threads; 1 leaves a core to reward workers and other ranks
    nnodes: int = 1  # learner ranks = nnodes * n_gpus_per_node (verl names; on CPU, "gpus" are processes)
    n_gpus_per_node: int = 1
    val_before_train: bool = True
    log_val_generations: int = 2  # samples (target image | rendered rollout) logged as a table per validation
    log_train_generations: int = 1  # samples (target image | rendered rollout) logged as a table every step
    # Added for the learner (S1 issue): complete checkpoints kept under <run_dir>/checkpoints (<= 0: all).
    max_actor_ckpt_to_keep: int = 2
    # verl's one-step-off-policy recipe: the split rollout worker samples step k+1's first batch while the learner
    # trains on step k's, so rollouts are one policy version old and the old log-probs are recomputed
    # (needs rollout.hybrid_engine=false; train.py's module docstring).
    one_step_off_policy: bool = False


@dataclass
class ModelConfig:
    """The policy model (verl ``actor_rollout_ref.model.*``)."""

    path: str | None = None  # a Hugging Face folder; None with tiny_preset builds one offline
    tiny_arch: Literal["qwen2_5_vl", "qwen3_vl"] = "qwen2_5_vl"
    tiny_preset: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = "float32"  # float64: numerical checks
    enable_gradient_checkpointing: bool = False
    # Tokens per LM-head chunk when the learner computes log-probs and entropy: never [tokens x vocab] logits
    # at once (each chunk is recomputed in the backward). 0: all tokens in one chunk.
    logprob_chunk_size: int = 512
    # verl model.use_remove_padding: the learner's forwards pack each micro-batch's real tokens into one row
    # (per-sequence positions, block-diagonal attention): no compute on padding, the same log-probs.
    use_remove_padding: bool = False
    freeze_vision_tower: bool = False
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"


@dataclass
class DataConfig:
    """Datasets and lengths (verl ``data.*``)."""

    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    train_batch_size: int = 8  # prompts per step, global
    val_batch_size: int | None = None
    max_prompt_length: int = 1024
    max_response_length: int = 512
    image_key: str = "images"
    shuffle: bool = True
    strict: bool = False  # True: a bad row stops the job instead of being skipped and counted


@dataclass
class OptimConfig:
    """AdamW and its schedule (verl ``actor.optim.*``)."""

    lr: float = 1e-6
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_warmup_steps_ratio: float = 0.0
    warmup_style: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = 0.0
    # The vision tower's learning rate (ms-swift's vit_lr); None: lr. A tower trained from scratch next to a
    # language model learns to see faster with a higher one.
    vision_lr: float | None = None


@dataclass
class ActorConfig:
    """The policy update (verl ``actor_rollout_ref.actor.*``)."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    ppo_mini_batch_size: int = 8  # prompts per optimizer step, global
    ppo_micro_batch_size_per_device: int = 4  # sequences per forward/backward on one device
    ppo_epochs: int = 1
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0  # dual-clip PPO: for A < 0 the per-token loss is at most -A * c (> 1)
    loss_agg_mode: Literal[
        "token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
    ] = "token-mean"
    grad_clip: float = 1.0
    entropy_coeff: float = 0.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    kl_loss_type: KLEstimator = "low_var_kl"
    # false: when the update is on-policy (ppo_epochs=1 and one mini-batch per rollout batch, verl's actor
    # ``on_policy``), the sampling policy's log-probs are the update's own, detached: the separate old_log_prob
    # forward is skipped (ratio 1, same gradient). true: always run that forward, as verl's trainer does.
    recompute_log_prob: bool = False
    # verl's actor.use_prefix_grouper: the learner's forwards (update, old and reference log-probs) run each prompt
    # once per micro-batch for all of its group's responses, each attending to it (learner/prefix_grouper.py):
    # the same log-probs and gradients for p + G*r token-forwards instead of G*(p + r). Needs sdpa or eager
    # attention (a 4-D mask); the mask is dense, (p + G*r)^2 per group, so it suits short-to-medium contexts.
    use_prefix_grouper: bool = False


@dataclass
class RefFSDPConfig:
    """How the reference model is sharded (verl ``actor_rollout_ref.ref.fsdp_config.*``)."""

    # Parameter shards in host memory between forwards: the reference runs twice per step at most, so its
    # weights need not hold GPU memory the rollout engine and the policy update could use.
    param_offload: bool = False


@dataclass
class RefConfig:
    """The frozen reference policy of the KL term (verl ``actor_rollout_ref.ref.*``). It is built on the
    learner's own ranks (same processes, GPUs and process group), frozen, in ``model.dtype``."""

    fsdp_config: RefFSDPConfig = field(default_factory=RefFSDPConfig)


@dataclass
class RolloutConfig:
    """Generation (verl ``actor_rollout_ref.rollout.*``)."""

    name: Literal["hf", "vllm"] = "hf"
    n: int = 8  # completions per prompt (the GRPO group size G)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    response_length: int = 512
    # vLLM's context length (prompt + response tokens); None: data.max_prompt_length + response_length.
    max_model_len: int | None = None
    tensor_model_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5
    micro_batch_size: int = 16  # sequences per HF generate call; also the granularity of reward overlap
    # HF rollouts: "lean" decodes Qwen-VL models with the lean loop (the model's prefill, then hand-written steps
    # over a preallocated KV cache: generate's tokens and logits, less per-token overhead); "generate": always
    # model.generate. Other models use generate either way.
    hf_decode: Literal["lean", "generate"] = "lean"
    # How the lean loop draws a sampled token: "fast" finds the top-p nucleus among the 16 most likely tokens
    # (sorting only a row whose nucleus is wider) and draws by inverse CDF: generate's distribution, not its
    # random stream, at a fraction of the cost of HF's sort-based top-p and torch.multinomial on a CPU core;
    # "hf": HF's warper and multinomial, the very tokens generate draws for a seed.
    hf_sampler: Literal["fast", "hf"] = "fast"
    val_temperature: float = 0.0  # validation sampling (0: greedy, one sample per prompt)
    enable_sleep_mode: bool = False  # vLLM colocated with the learner on GPUs: free memory between rollouts
    # verl's name: the most bytes per weight bucket a vLLM engine loads at once (a larger tensor is one bucket).
    update_weights_bucket_megabytes: int = 512
    # verl actor_rollout_ref.hybrid_engine. true (colocated): HF generate runs inside learner rank 0's process
    # with the learner's own weights (shared storage on one rank, a gathered in-memory copy on several); false
    # (split): a separate rollout worker (its own process / GPU) receives the weights after every update.
    hybrid_engine: bool = False


@dataclass
class RolloutCorrectionConfig:
    """Off-policy handling of the rollouts (verl ``algorithm.rollout_correction.*``)."""

    # True: the rollout engine's own log-probs of the sampled tokens are the PPO ratio's old log-probs, and the
    # learner's old_log_prob forward is skipped (verl's bypass mode). With trainer.one_step_off_policy the ratio
    # is then taken against the policy that actually sampled (one version old), not the one starting the update.
    bypass_mode: bool = False


@dataclass
class AlgorithmConfig:
    """Advantage estimation and KL (verl ``algorithm.*``)."""

    adv_estimator: Literal["grpo"] = "grpo"
    norm_adv_by_std_in_grpo: bool = True
    use_kl_in_reward: bool = False
    kl_penalty: KLEstimator = "low_var_kl"
    kl_coef: float = 0.001
    # DAPO dynamic sampling (verl algorithm.filter_groups): drop groups whose rewards are all equal (no signal),
    # generate for more prompts until train_batch_size groups remain, at most max_num_gen_batches rounds.
    filter_groups: bool = False
    max_num_gen_batches: int = 4
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)


@dataclass
class JudgeConfig:
    """An LLM judge behind any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, SGLang, a hosted API).

    Used by the ``codepercept`` reward for r_image and r_code when ``enabled`` and ``base_url`` is set; otherwise
    (and per sample when the judge fails) deterministic stand-ins are used. See codepercept_rl/rewards/judge.py.
    """

    enabled: bool = True
    base_url: str | None = None  # e.g. http://127.0.0.1:8000/v1; None: no judge
    model: str = ""
    api_key_env: str | None = (
        "CODEPERCEPT_JUDGE_API_KEY"  # name of the env var holding the key (never the key)
    )
    timeout_s: float = 60.0  # per HTTP attempt
    max_concurrency: int = 8  # requests in flight per batch
    max_retries: int = 3  # after the first attempt, with exponential back-off
    cache_dir: str | None = None  # disk cache of verdicts keyed by the inputs; None: no cache


@dataclass
class RewardConfig:
    """The reward function and where it runs."""

    name: str = "codepercept"
    weights: dict[str, float] = field(default_factory=dict)
    path: str | None = None  # a user's own function: my_rewards.py:my_fn
    server_urls: list[str] = field(default_factory=list)  # external reward services; empty: a local pool
    num_workers: int = 2
    timeout_s: float = 10.0
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class RayConfig:
    """Ray placement. ``enabled=false`` runs every actor in-process (RLlib's local mode): breakpoints work."""

    enabled: bool = True
    address: str | None = None  # None: start a local Ray; "auto": join the running cluster
    num_cpus: int | None = None
    # Niceness of the worker processes of a Ray this job starts itself (Ray's own default: 15, below the driver).
    # None keeps Ray's; 0 lets actors compete on equal terms with other work on the machine (the quickstart runs
    # its evaluation beside R1 at niceness 10, which would otherwise take the CPU from R1's actors).
    worker_niceness: int | None = None


@dataclass
class SFTConfig:
    """Supervised fine-tuning (S1) specifics; the rest comes from ``trainer``, ``model``, ``data``, ``actor``.

    Added for the learner (S1 issue). Sizes: ``data.train_batch_size`` is the global batch (examples per
    optimizer step), ``actor.ppo_micro_batch_size_per_device`` the examples per forward/backward.
    """

    task_ratio: dict[str, float] = field(
        default_factory=dict
    )  # e.g. {caption: 1, code: 1}; empty: natural mix
    max_length: int = 2048  # tokens per example, image tokens included; longer rows are skipped (or strict)
    group_by_length: bool = True  # micro-batches of similar lengths (little padding); False: epoch order
    num_processes: int = (
        1  # ranks the job starts itself (Ray actors or local processes); torchrun: WORLD_SIZE
    )
    gen_num_samples: int = 8  # held-out `code` rows whose generated code is run through the reward pool
    gen_max_new_tokens: int = 256
    export_hf: bool = True  # write <run_dir>/hf (save_pretrained + processor) at the end


@dataclass
class JobConfig:
    """All sections. Jobs read the ones they need; unknown keys anywhere are refused."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    ref: RefConfig = field(default_factory=RefConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)  # added for the S1 job
