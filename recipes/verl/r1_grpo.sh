#!/usr/bin/env bash
# R1 (GRPO) of CodePercept with verl's own trainer (verl.trainer.main_ppo, verl 0.9.1), on this project's R1
# parquet and reward service. From the repository root of a GPU node (the Ray head on a multi-node run):
#
#   MODEL_SIZE=8b MODEL_PATH=/ckpt/codepercept-8b-s1/hf DATA_DIR=data/icc/exports/r1 \
#       bash recipes/verl/r1_grpo.sh [hydra overrides...]
#
# Paper settings (docs/paper.md): G=8, temperature 1.0, top-p 0.85, repetition penalty 1.1, max response 8,192,
# 1 epoch, AdamW lr 1e-6 with 5% warm-up, grad clip 0.5, KL beta 0.001 (low-var KL loss), advantage
# (r - mean) / std within the group. MODEL_SIZE picks the cluster settings (nodes, vLLM tensor parallel, token
# budget per GPU, offload); README.md has the table. Extra arguments are hydra overrides, appended last (they win).
#
# Environment (defaults in brackets):
#   MODEL_SIZE        4b | 8b | 32b (required)
#   MODEL_PATH        the S1 checkpoint, a Hugging Face model directory (required)
#   DATA_DIR          the R1 export, with train.parquet and validation.parquet [data/icc/exports/r1]
#   TRAIN_FILES / VAL_FILES   instead of DATA_DIR
#   REWARD_URL        reward service(s), comma-separated, reachable from every node. Unset on one node: a
#                     service is started here on 127.0.0.1:REWARD_PORT [8000] with REWARD_WORKERS sandboxes
#                     [half the cores, at most 32] and stopped when training ends.
#   REWARD_NAME       codepercept | render_similarity | rlrf | ... [codepercept]
#   JUDGE_URL / JUDGE_MODEL   an OpenAI-compatible LLM judge for r_code / r_image (the paper's); key in
#                     CODEPERCEPT_JUDGE_API_KEY. Unset: the deterministic stand-in scores.
#   SKIP_REGISTER=1   the service already holds the R1 images (they are registered by target_id before training)
#   NNODES, N_GPUS_PER_NODE, EXPERIMENT_NAME, PROJECT_NAME [codepercept-rl], CKPT_DIR [runs/verl/EXPERIMENT_NAME]
#   REWARD_FN_PATH    where verl loads compute_score from [this checkout's codepercept_rl/rewards/adapters/verl.py;
#                     pkg://codepercept_rl.rewards.adapters.verl when nodes hold the checkout at other paths]
#   DRY_RUN=1         print the commands instead of running them
set -euo pipefail
# shellcheck source=recipes/verl/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

check_size
[[ -n "${MODEL_PATH:-}" ]] || die "set MODEL_PATH to the S1 checkpoint (a Hugging Face model directory)"

# Per size: nodes, vLLM tensor parallel, GPU memory for vLLM, micro-batch (per GPU, used when dynamic batching
# is off), tokens per GPU per micro-step (dynamic batching; one sequence is up to 2,048 + 8,192), offload.
case "$MODEL_SIZE" in
  4b) nodes=1 tp=1 gpu_mem=0.6 micro=4 max_tokens=32768 actor_optim_offload=false ref_offload=false ;;
  8b) nodes=1 tp=2 gpu_mem=0.6 micro=2 max_tokens=20480 actor_optim_offload=false ref_offload=false ;;
  32b) nodes=4 tp=4 gpu_mem=0.5 micro=1 max_tokens=10240 actor_optim_offload=true ref_offload=true ;;
esac
NNODES="${NNODES:-$nodes}"
N_GPUS_PER_NODE="${N_GPUS_PER_NODE:-8}"
DATA_DIR="${DATA_DIR:-data/icc/exports/r1}"
TRAIN_FILES="${TRAIN_FILES:-$DATA_DIR/train.parquet}"
VAL_FILES="${VAL_FILES:-$DATA_DIR/validation.parquet}"
EXPERIMENT_NAME="${EXPERIMENT_NAME:-r1_qwen3vl_${MODEL_SIZE}_verl}"
PROJECT_NAME="${PROJECT_NAME:-codepercept-rl}"
CKPT_DIR="${CKPT_DIR:-runs/verl/$EXPERIMENT_NAME}"
REWARD_NAME="${REWARD_NAME:-codepercept}"
REWARD_FN_PATH="${REWARD_FN_PATH:-$REPO/codepercept_rl/rewards/adapters/verl.py}"
need_file "$TRAIN_FILES" "TRAIN_FILES (the R1 export, codepercept-rl data export DIR --formats r1)"
need_file "$VAL_FILES" "VAL_FILES"

# The reward service: given, or started here for a one-node run.
REWARD_URL="${REWARD_URL:-}"
if [[ -z "$REWARD_URL" ]]; then
  ((NNODES == 1)) || die "NNODES=$NNODES: set REWARD_URL to a reward service every node reaches" \
    "(codepercept-rl reward-server --host 0.0.0.0 --port 8000 --workers N on a CPU machine)"
  REWARD_PORT="${REWARD_PORT:-8000}"
  cores="$(nproc)"
  workers=$((cores / 2 < 1 ? 1 : (cores / 2 > 32 ? 32 : cores / 2)))
  REWARD_WORKERS="${REWARD_WORKERS:-$workers}"
  REWARD_URL="http://127.0.0.1:$REWARD_PORT"
  server=("$PYTHON" -m reward_servers.server --host 127.0.0.1 --port "$REWARD_PORT" --workers "$REWARD_WORKERS")
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# $(show "${server[@]}") &"
  else
    mkdir -p "$CKPT_DIR"
    echo "+ $(show "${server[@]}") > $CKPT_DIR/reward_server.log" >&2
    "${server[@]}" >"$CKPT_DIR/reward_server.log" 2>&1 &
    server_pid=$!
    trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true' EXIT
  fi
fi

# verl hands a reward function strings only: the images reach the service by target_id (extra_info.target_id).
if [[ "${SKIP_REGISTER:-0}" != 1 ]]; then
  register=("$PYTHON" "$VERL_RECIPES/register_targets.py" --url "$REWARD_URL" --wait 300)
  [[ -z "${server_pid:-}" ]] || register+=(--server-pid "$server_pid")
  run_side "${register[@]}" "$TRAIN_FILES" "$VAL_FILES"
fi

args=(
  algorithm.adv_estimator=grpo
  algorithm.norm_adv_by_std_in_grpo=true
  algorithm.use_kl_in_reward=false
  data.train_files="$TRAIN_FILES"
  data.val_files="$VAL_FILES"
  data.prompt_key=prompt
  data.image_key=images
  data.train_batch_size=32
  data.max_prompt_length=2048
  data.max_response_length=8192
  data.filter_overlong_prompts=true
  data.truncation=error
  actor_rollout_ref.model.path="$MODEL_PATH"
  actor_rollout_ref.model.enable_gradient_checkpointing=true
  actor_rollout_ref.model.use_remove_padding=true
  actor_rollout_ref.actor.optim.lr=1e-6
  actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.05
  actor_rollout_ref.actor.optim.lr_scheduler_type=constant
  actor_rollout_ref.actor.optim.weight_decay=0.0
  # verl 0.9.1 clips with optim.clip_grad; actor.grad_clip is read nowhere, set too so both read 0.5.
  actor_rollout_ref.actor.optim.clip_grad=0.5
  actor_rollout_ref.actor.grad_clip=0.5
  actor_rollout_ref.actor.ppo_mini_batch_size=32
  actor_rollout_ref.actor.ppo_epochs=1
  actor_rollout_ref.actor.use_dynamic_bsz=true
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu="$max_tokens"
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu="$micro"
  actor_rollout_ref.actor.clip_ratio_low=0.2
  actor_rollout_ref.actor.clip_ratio_high=0.2
  actor_rollout_ref.actor.loss_agg_mode=token-mean
  actor_rollout_ref.actor.entropy_coeff=0
  actor_rollout_ref.actor.use_kl_loss=true
  actor_rollout_ref.actor.kl_loss_coef=0.001
  actor_rollout_ref.actor.kl_loss_type=low_var_kl
  # Declared by verl 0.9.1, not yet read by its FSDP engine (README.md, "Gaps").
  actor_rollout_ref.actor.freeze_vision_tower=true
  actor_rollout_ref.actor.fsdp_config.param_offload=false
  actor_rollout_ref.actor.fsdp_config.optimizer_offload="$actor_optim_offload"
  actor_rollout_ref.ref.fsdp_config.param_offload="$ref_offload"
  actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu="$micro"
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.n=8
  actor_rollout_ref.rollout.temperature=1.0
  actor_rollout_ref.rollout.top_p=0.85
  # A RolloutConfig field that verl 0.9.1's agent loop overrides with 1.0 (README.md, "Gaps").
  ++actor_rollout_ref.rollout.repetition_penalty=1.1
  actor_rollout_ref.rollout.tensor_model_parallel_size="$tp"
  actor_rollout_ref.rollout.gpu_memory_utilization="$gpu_mem"
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu="$micro"
  actor_rollout_ref.rollout.max_num_batched_tokens=16384
  reward.custom_reward_function.path="$REWARD_FN_PATH"
  reward.custom_reward_function.name=compute_score
  "++reward.custom_reward_function.reward_kwargs.reward_url='$REWARD_URL'"
  "++reward.custom_reward_function.reward_kwargs.reward_name='$REWARD_NAME'"
)
if [[ -n "${JUDGE_URL:-}" ]]; then
  args+=("++reward.custom_reward_function.reward_kwargs.judge_url='$JUDGE_URL'")
fi
if [[ -n "${JUDGE_MODEL:-}" ]]; then
  args+=("++reward.custom_reward_function.reward_kwargs.judge_model='$JUDGE_MODEL'")
fi
add_trainer_args 50
args+=(trainer.val_before_train=true)

run_main "$PYTHON" -m verl.trainer.main_ppo "${args[@]}" "$@"
