#!/usr/bin/env bash
# S1 (SFT) of CodePercept with verl's SFT trainer (torchrun -m verl.trainer.sft_trainer, verl 0.9.1): its
# MultiTurnSFTDataset takes images (the <image> placeholder of a user turn + an "images" column) and builds
# Qwen-VL position ids, so the paper's two S1 tasks (image -> code-grounded caption, image -> explanatory code)
# train here as they do with `codepercept-rl sft`. Data: the verl_sft export (verl reads parquet only):
#
#   codepercept-rl data export data/icc --formats r1,verl_sft
#   MODEL_SIZE=8b DATA_DIR=data/icc/exports/verl_sft bash recipes/verl/s1_sft.sh [hydra overrides...]
#
# Run it on every node of a multi-node job with the same MASTER_ADDR (torchrun's c10d rendezvous). Paper
# settings (docs/paper.md): Qwen3-VL-{4B,8B,32B}-Instruct, 1 epoch, AdamW, cosine 3e-6 -> 2e-7 with 5% warm-up,
# bf16, global batch 128, ZeRO-2, 32 GPUs. The checkpoint R1 starts from is
# CKPT_DIR/global_step_<last>/huggingface (checkpoint.save_contents includes hf_model).
#
# Environment (defaults in brackets):
#   MODEL_SIZE        4b | 8b | 32b (required)
#   MODEL_PATH        [Qwen/Qwen3-VL-<SIZE>-Instruct]
#   DATA_DIR          the verl_sft export, with train.parquet and validation.parquet [data/icc/exports/verl_sft]
#   TRAIN_FILES / VAL_FILES   instead of DATA_DIR
#   NNODES [4], N_GPUS_PER_NODE [8], MASTER_ADDR (required when NNODES > 1), MASTER_PORT [29500]
#   EXPERIMENT_NAME [s1_qwen3vl_<size>_verl], PROJECT_NAME [codepercept-rl], CKPT_DIR [runs/verl/EXPERIMENT_NAME]
#   DRY_RUN=1         print the command instead of running it
set -euo pipefail
# shellcheck source=recipes/verl/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

check_size
# Per size: FSDP resharding after forward (false keeps parameters gathered between forward and backward, as
# ZeRO-2; 32B's bf16 weights do not fit a GPU unsharded, so it shards them as ZeRO-3) and tokens per GPU per
# micro-step (dynamic batching; a record is at most data.max_length = 8,192 tokens).
case "$MODEL_SIZE" in
  4b) reshard=false max_tokens=16384 ;;
  8b) reshard=false max_tokens=16384 ;;
  32b) reshard=true max_tokens=8192 ;;
esac
size_upper="${MODEL_SIZE^^}"
MODEL_PATH="${MODEL_PATH:-Qwen/Qwen3-VL-${size_upper}-Instruct}"
NNODES="${NNODES:-4}"
N_GPUS_PER_NODE="${N_GPUS_PER_NODE:-8}"
MASTER_PORT="${MASTER_PORT:-29500}"
DATA_DIR="${DATA_DIR:-data/icc/exports/verl_sft}"
TRAIN_FILES="${TRAIN_FILES:-$DATA_DIR/train.parquet}"
VAL_FILES="${VAL_FILES:-$DATA_DIR/validation.parquet}"
EXPERIMENT_NAME="${EXPERIMENT_NAME:-s1_qwen3vl_${MODEL_SIZE}_verl}"
PROJECT_NAME="${PROJECT_NAME:-codepercept-rl}"
CKPT_DIR="${CKPT_DIR:-runs/verl/$EXPERIMENT_NAME}"
need_file "$TRAIN_FILES" "TRAIN_FILES (the S1 export for verl, codepercept-rl data export DIR --formats verl_sft)"
need_file "$VAL_FILES" "VAL_FILES"

launcher=(torchrun --nnodes="$NNODES" --nproc-per-node="$N_GPUS_PER_NODE")
if ((NNODES == 1)); then
  launcher+=(--standalone)
else
  [[ -n "${MASTER_ADDR:-}" ]] || die "NNODES=$NNODES: set MASTER_ADDR to the first node's address (same on every node)"
  launcher+=(--rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$EXPERIMENT_NAME")
fi

args=(
  data.train_files="$TRAIN_FILES"
  data.val_files="$VAL_FILES"
  data.messages_key=messages
  data.train_batch_size=128
  data.micro_batch_size_per_gpu=1
  data.use_dynamic_bsz=true
  data.max_token_len_per_gpu="$max_tokens"
  data.max_length=8192
  data.truncation=right
  data.pad_mode=no_padding
  model.path="$MODEL_PATH"
  model.enable_gradient_checkpointing=true
  model.use_remove_padding=true
  optim.lr=3e-6
  optim.lr_scheduler_type=cosine
  optim.min_lr_ratio=0.0666667
  optim.lr_warmup_steps_ratio=0.05
  optim.weight_decay=0.0
  'optim.betas=[0.9,0.999]'
  optim.clip_grad=1.0
  engine.dtype=bfloat16
  engine.reshard_after_forward="$reshard"
  'checkpoint.save_contents=["model","optimizer","extra","hf_model"]'
  'checkpoint.load_contents=["model","optimizer","extra"]'
  trainer.max_ckpt_to_keep=2
  trainer.seed=0
)
add_trainer_args 200

run_main "${launcher[@]}" -m verl.trainer.sft_trainer "${args[@]}" "$@"
