# Shared by r1_grpo.sh and s1_sft.sh (sourced, not run): paths, errors, the model-size check and DRY_RUN.
#
# DRY_RUN=1 prints every command a script would run, shell-quoted, one per line, and runs none of them; a
# command the script would only run when it is not a dry run (starting the reward service, registering targets)
# is printed as a comment line ("# ...").
# shellcheck shell=bash

# shellcheck disable=SC2034  # REPO and PYTHON are for the scripts that source this file
VERL_RECIPES="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$VERL_RECIPES/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
DRY_RUN="${DRY_RUN:-0}"

# die MESSAGE: one line on stderr, exit status 2 (a setting the user can fix).
die() {
  echo "$(basename "$0"): error: $*" >&2
  exit 2
}

# check_size: MODEL_SIZE must be one of the paper's sizes.
check_size() {
  case "${MODEL_SIZE:-}" in
    4b | 8b | 32b) ;;
    "") die "set MODEL_SIZE to 4b, 8b or 32b" ;;
    *) die "MODEL_SIZE must be 4b, 8b or 32b, got '$MODEL_SIZE'" ;;
  esac
}

# need_file PATH WHAT: stop with one line unless PATH is a readable file (skipped in a dry run and for a
# hydra list such as [a.parquet,b.parquet]).
need_file() {
  [[ "$DRY_RUN" == 1 || "$1" == \[* || -r "$1" ]] || die "$2 not found: $1"
}

# show ARGS...: the command, shell-quoted, on one line (no newline).
show() {
  local quoted
  quoted="$(printf '%q ' "$@")"
  printf '%s' "${quoted% }"
}

# run_main ARGS...: the job itself; printed in a dry run, else run (status returned to the caller).
run_main() {
  if [[ "$DRY_RUN" == 1 ]]; then
    show "$@"
    echo
    return 0
  fi
  echo "+ $(show "$@")" >&2
  "$@"
}

# run_side ARGS...: a preparation step; printed as a comment in a dry run, else run (stops on failure).
run_side() {
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# $(show "$@")"
    return 0
  fi
  echo "+ $(show "$@")" >&2
  "$@" || die "failed ($?): $(show "$@")"
}

# add_trainer_args EVERY: appends to the caller's `args` the trainer.* overrides both stages share (W&B and
# console logging, run names and directory, cluster shape, one epoch on CUDA), saving and validating every
# EVERY steps.
add_trainer_args() {
  args+=(
    'trainer.logger=["console","wandb"]'
    trainer.project_name="$PROJECT_NAME"
    trainer.experiment_name="$EXPERIMENT_NAME"
    trainer.default_local_dir="$CKPT_DIR"
    trainer.nnodes="$NNODES"
    trainer.n_gpus_per_node="$N_GPUS_PER_NODE"
    trainer.total_epochs=1
    trainer.save_freq="$1"
    trainer.test_freq="$1"
    trainer.device=cuda
  )
}
