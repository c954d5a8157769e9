"""The verl backend (recipes/verl): verl composes its own configs from what the scripts pass, and verl's reward
loop scores a batch of real R1 parquet rows through a real reward service on 127.0.0.1.

verl cannot train without a GPU, so the scripts run in their DRY_RUN mode (they print the command) and the
test composes verl's config with hydra exactly as ``verl.trainer.main_ppo`` / ``verl.trainer.sft_trainer``
would, then runs verl's own checks on it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = [pytest.mark.verl, pytest.mark.filterwarnings("ignore:Disabled critic:UserWarning")]

verl = pytest.importorskip(
    "verl", reason="verl is not installed (make test installs it; pip install -e '.[verl]')"
)
pytest.importorskip("hydra", reason="hydra-core is not installed (pip install -e '.[dev]')")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from tests.service import free_port, served  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes" / "verl"
ADAPTER = REPO / "codepercept_rl" / "rewards" / "adapters" / "verl.py"
VERL_CONFIG = Path(verl.__file__).parent / "trainer" / "config"
# What each size's R1 run asks of the cluster (the README's table).
R1_SIZES = {
    "4b": {"nnodes": 1, "tp": 1, "optimizer_offload": False, "ref_offload": False, "tokens": 32768},
    "8b": {"nnodes": 1, "tp": 2, "optimizer_offload": False, "ref_offload": False, "tokens": 20480},
    "32b": {"nnodes": 4, "tp": 4, "optimizer_offload": True, "ref_offload": True, "tokens": 10240},
}
S1_SIZES = {"4b": (False, 16384), "8b": (False, 16384), "32b": (True, 8192)}


# Every variable the scripts read: the tests set what they need on a clean copy of the environment.
SCRIPT_VARS = [
    "MODEL_SIZE",
    "MODEL_PATH",
    "DATA_DIR",
    "TRAIN_FILES",
    "VAL_FILES",
    "REWARD_URL",
    "REWARD_PORT",
    "REWARD_WORKERS",
    "REWARD_NAME",
    "JUDGE_URL",
    "JUDGE_MODEL",
    "SKIP_REGISTER",
    "NNODES",
    "N_GPUS_PER_NODE",
    "EXPERIMENT_NAME",
    "PROJECT_NAME",
    "CKPT_DIR",
    "REWARD_FN_PATH",
    "DRY_RUN",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PYTHON",
]


def script_env(**env: str) -> dict[str, str]:
    """The environment without the scripts' variables, plus ``env``."""
    return {**{k: v for k, v in os.environ.items() if k not in SCRIPT_VARS}, **env}


def dry_run(script: str, *args: str, **env: str) -> tuple[list[str], list[str]]:
    """Runs ``recipes/verl/<script>`` with DRY_RUN=1; returns (its preparation steps, its main command)."""
    proc = subprocess.run(
        ["bash", str(RECIPES / script), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=script_env(DRY_RUN="1", PYTHON="python3", **env),
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    side = [line[2:] for line in lines if line.startswith("# ")]
    [main] = [shlex.split(line) for line in lines if line and not line.startswith("#")]
    return side, main


def overrides_after(command: list[str], module: str) -> list[str]:
    """The hydra overrides of ``python -m MODULE ...`` / ``torchrun ... -m MODULE ...``."""
    i = command.index(module)
    assert command[i - 1] == "-m"
    return command[i + 1 :]


def verl_config(name: str, overrides: list[str]) -> DictConfig:
    """verl's own config ``name`` composed with ``overrides``, as its ``@hydra.main`` entry points do."""
    with initialize_config_dir(config_dir=str(VERL_CONFIG), version_base=None):
        return compose(config_name=name, overrides=overrides)


def refused(script: str, **env: str) -> str:
    """Runs a script that must refuse its settings; returns its one-line error."""
    proc = subprocess.run(
        ["bash", str(RECIPES / script)], capture_output=True, text=True, timeout=30, env=script_env(**env)
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("size", list(R1_SIZES))
def test_r1_script_composes_verls_ppo_config(size: str, tmp_path: Path) -> None:
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo.reward import resolve_reward_manager_cls
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config
    from verl.workers.config import RolloutConfig

    want = R1_SIZES[size]
    env = {"MODEL_SIZE": size, "MODEL_PATH": "/ckpt/s1/hf", "DATA_DIR": str(tmp_path / "r1")}
    urls = "http://10.0.0.5:8000,http://10.0.0.6:8000"
    if want["nnodes"] > 1:
        env["REWARD_URL"] = urls  # a multi-node run needs a service every node reaches
    side, command = dry_run("r1_grpo.sh", "trainer.val_before_train=false", **env)
    assert command[:3] == ["python3", "-m", "verl.trainer.main_ppo"]
    url = urls if want["nnodes"] > 1 else "http://127.0.0.1:8000"
    if want["nnodes"] == 1:  # no REWARD_URL on one node: the script starts the service itself
        assert side[0].startswith("python3 -m reward_servers.server --host 127.0.0.1 --port 8000")
    register = shlex.split(side[-1])
    assert register[1] == str(RECIPES / "register_targets.py")
    assert register[register.index("--url") + 1] == url
    assert register[-2:] == [f"{tmp_path}/r1/train.parquet", f"{tmp_path}/r1/validation.parquet"]

    cfg = verl_config("ppo_trainer", overrides_after(command, "verl.trainer.main_ppo"))
    # verl's own checks, as main_ppo runs them before starting Ray, and the dataclasses its workers build.
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    assert need_reference_policy(cfg) and not need_critic(cfg)  # GRPO: a reference for the KL loss, no critic
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    rollout: RolloutConfig = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    algorithm: AlgoConfig = omega_conf_to_dataclass(cfg.algorithm)
    manager = resolve_reward_manager_cls(cfg)  # as RewardLoopManager does
    OmegaConf.resolve(cfg)  # the trainer resolves every interpolation before use

    assert algorithm.adv_estimator == "grpo" and algorithm.norm_adv_by_std_in_grpo
    assert not algorithm.use_kl_in_reward
    assert rollout.name == "vllm" and rollout.n == 8 and rollout.temperature == 1.0 and rollout.top_p == 0.85
    assert rollout.repetition_penalty == 1.1 and rollout.tensor_model_parallel_size == want["tp"]
    assert rollout.prompt_length == 2048 and rollout.response_length == 8192
    assert actor.optim.lr == 1e-6 and actor.optim.lr_warmup_steps_ratio == 0.05
    assert actor.optim.lr_scheduler_type == "constant"
    assert actor.optim.clip_grad == 0.5  # what verl's engine clips with
    assert actor.use_kl_loss and actor.kl_loss_coef == 0.001 and actor.kl_loss_type == "low_var_kl"
    assert actor.clip_ratio_low == actor.clip_ratio_high == 0.2 and actor.loss_agg_mode == "token-mean"
    assert actor.ppo_mini_batch_size == 32 and actor.rollout_n == 8 and actor.ppo_epochs == 1
    assert actor.use_dynamic_bsz and actor.ppo_max_token_len_per_gpu == want["tokens"] >= 2048 + 8192
    assert cfg.actor_rollout_ref.actor.fsdp_config.optimizer_offload is want["optimizer_offload"]
    assert cfg.actor_rollout_ref.ref.fsdp_config.param_offload is want["ref_offload"]
    assert cfg.data.train_files == f"{tmp_path}/r1/train.parquet"
    assert cfg.data.val_files == f"{tmp_path}/r1/validation.parquet"
    assert cfg.data.image_key == "images" and cfg.data.prompt_key == "prompt"
    assert cfg.data.train_batch_size == 32
    assert cfg.actor_rollout_ref.model.path == "/ckpt/s1/hf"
    assert cfg.trainer.nnodes == want["nnodes"] and cfg.trainer.n_gpus_per_node == 8
    assert cfg.trainer.total_epochs == 1 and list(cfg.trainer.logger) == ["console", "wandb"]
    assert cfg.trainer.project_name == "codepercept-rl"
    assert cfg.trainer.experiment_name == f"r1_qwen3vl_{size}_verl"
    assert cfg.trainer.val_before_train is False  # an extra argument reaches verl and wins over the script's
    # The reward: 0.9.1 reads reward.custom_reward_function (the top-level one is migrated only by
    # fully_async_main), with reward_kwargs passed to every call.
    assert manager is NaiveRewardManager and cfg.custom_reward_function.path is None
    fn = cfg.reward.custom_reward_function
    assert fn.path == str(ADAPTER) and Path(fn.path).is_file() and fn.name == "compute_score"
    assert dict(fn.reward_kwargs) == {"reward_url": url, "reward_name": "codepercept"}


@pytest.mark.parametrize("size", list(S1_SIZES))
def test_s1_script_composes_verls_sft_config(size: str, tmp_path: Path) -> None:
    from verl.utils.config import omega_conf_to_dataclass

    reshard, tokens = S1_SIZES[size]
    env = {"MODEL_SIZE": size, "DATA_DIR": str(tmp_path / "sft"), "MASTER_ADDR": "10.0.0.1"}
    side, command = dry_run("s1_sft.sh", "trainer.save_freq=7", **env)
    assert side == []
    assert command[:3] == ["torchrun", "--nnodes=4", "--nproc-per-node=8"]
    assert "--rdzv-endpoint=10.0.0.1:29500" in command
    cfg = verl_config("sft_trainer_engine", overrides_after(command, "verl.trainer.sft_trainer"))
    # What SFTTrainer._build_config converts (the model is left out: it loads the checkpoint's files).
    engine = omega_conf_to_dataclass(cfg.engine)
    optim = omega_conf_to_dataclass(cfg.optim)
    checkpoint = omega_conf_to_dataclass(cfg.checkpoint)
    omega_conf_to_dataclass(cfg.profiler)
    OmegaConf.resolve(cfg)
    assert cfg.model.path == f"Qwen/Qwen3-VL-{size.upper()}-Instruct"
    assert cfg.data.train_files == f"{tmp_path}/sft/train.parquet" and cfg.data.messages_key == "messages"
    assert cfg.data.train_batch_size == 128 and cfg.data.max_length == 8192
    assert cfg.data.use_dynamic_bsz and cfg.data.max_token_len_per_gpu == tokens >= cfg.data.max_length
    assert optim.lr == 3e-6 and optim.lr_scheduler_type == "cosine" and optim.lr_warmup_steps_ratio == 0.05
    assert optim.lr * optim.min_lr_ratio == pytest.approx(2e-7, rel=1e-4)
    assert engine.reshard_after_forward is reshard and engine.dtype == "bfloat16"
    assert "hf_model" in checkpoint.save_contents and "hf_model" not in checkpoint.load_contents
    assert cfg.trainer.nnodes == 4 and cfg.trainer.n_gpus_per_node == 8 and cfg.trainer.total_epochs == 1
    assert cfg.trainer.save_freq == 7  # an extra argument wins


def test_scripts_refuse_bad_settings(tmp_path: Path) -> None:
    assert "MODEL_SIZE must be 4b, 8b or 32b, got '7b'" in refused("r1_grpo.sh", MODEL_SIZE="7b")
    assert "set MODEL_SIZE" in refused("s1_sft.sh")
    assert "set MODEL_PATH" in refused("r1_grpo.sh", MODEL_SIZE="4b")
    assert "set REWARD_URL" in refused(
        "r1_grpo.sh", MODEL_SIZE="4b", MODEL_PATH="/m", NNODES="2", DRY_RUN="1"
    )
    assert "set MASTER_ADDR" in refused("s1_sft.sh", MODEL_SIZE="4b", DATA_DIR=str(tmp_path), DRY_RUN="1")
    missing = refused("r1_grpo.sh", MODEL_SIZE="4b", MODEL_PATH="/m", DATA_DIR=str(tmp_path / "nope"))
    assert f"{tmp_path}/nope/train.parquet" in missing  # checked before anything starts


# ------------------------------------------------------------------------------------- data + service
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real dataset (4 items, 2 families, rendered in the sandbox) and its r1 / s1 / verl_sft exports."""
    from data_tools.build import BuildSpec, build
    from data_tools.exports import export

    root = tmp_path_factory.mktemp("verl_backend") / "ds"
    build(BuildSpec(["shapes", "bars"], 4, seed=3, shard_size=4), root, progress=False)
    export(root, ["r1", "s1", "verl_sft"], val_fraction=0.25, test_fraction=0.25)
    return root / "exports"


@pytest.fixture(scope="module")
def reward_service() -> Iterator[str]:
    """The reward service as r1_grpo.sh starts it: its own process, one sandbox worker, on 127.0.0.1."""
    with served("reward_servers.server", "--host", "127.0.0.1", "--workers", "1") as (url, _):
        yield url


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory):
    """An offline tiny Qwen2.5-VL tokenizer (saved, for verl's hf_tokenizer) and image-only processor."""
    from codepercept_rl.models.processor import make_processor
    from codepercept_rl.models.spec import get_spec
    from codepercept_rl.models.tokenizer import build_tokenizer

    spec = get_spec("nano")
    tokenizer = build_tokenizer(spec.vocab_size, model_max_length=spec.max_position_embeddings)
    folder = tmp_path_factory.mktemp("tiny_vlm")
    tokenizer.save_pretrained(folder)
    return folder, tokenizer, make_processor("qwen2_5_vl", spec, tokenizer)


def fence(code: str) -> str:
    return f"Here is the code:\n```python\n{code.rstrip()}\n```"


def rollout_batch(rows, tokenizer, answers: list[list[str]]):
    """verl's rollout output for the collated ``rows``: each row repeated once per answer, the answers as
    right-padded response tokens after the prompt (what the reward manager decodes)."""
    import torch
    from verl import DataProto

    n = len(answers[0])
    batch = DataProto.from_single_dict(rows).repeat(repeat_times=n, interleave=True)
    encoded = [tokenizer(a, add_special_tokens=False)["input_ids"] for group in answers for a in group]
    width = max(len(e) for e in encoded)
    prompt = tokenizer("Reproduce the figure.", add_special_tokens=False)["input_ids"]
    responses = torch.tensor([e + [tokenizer.pad_token_id] * (width - len(e)) for e in encoded])
    prompts = torch.tensor([prompt] * len(encoded))
    mask = torch.tensor([[1] * len(prompt) + [1] * len(e) + [0] * (width - len(e)) for e in encoded])
    generated = DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": mask,
        }
    )
    return batch.union(generated)


def test_verls_reward_loop_scores_r1_rows_through_the_service(
    exported: Path, reward_service: str, tiny_vlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reward function loaded from the composed config by verl's RewardLoopWorker (what main_ppo's reward
    workers run), on rows read by verl's RLHFDataset from the data_tools R1 export."""
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    from codepercept_rl.rewards.adapters import verl as adapter

    monkeypatch.delenv(adapter.URL_ENV, raising=False)  # the URL must come from the config's reward_kwargs
    folder, tokenizer, processor = tiny_vlm
    env = {"MODEL_SIZE": "8b", "MODEL_PATH": str(folder), "DATA_DIR": str(exported / "r1")}
    side, command = dry_run("r1_grpo.sh", **env, REWARD_URL=reward_service)
    # verl's overlong-prompt filter calls qwen_vl_utils, which needs torchvision (absent from CPU installs).
    cfg = verl_config(
        "ppo_trainer",
        [*overrides_after(command, "verl.trainer.main_ppo"), "data.filter_overlong_prompts=false"],
    )
    OmegaConf.resolve(cfg)

    data = RLHFDataset(cfg.data.train_files, tokenizer, cfg.data, processor)
    rows = collate_fn([data[i] for i in range(len(data))])
    codes = [rm["ground_truth"] for rm in rows["reward_model"]]
    assert len(codes) == 2 and codes[0] != codes[1]
    assert all(info["target_id"] == info["item_id"] for info in rows["extra_info"])
    # Each prompt: its own reference code (right), the other item's code (wrong), then no code at all.
    answers = [[fence(codes[i]), fence(codes[1 - i]), "I cannot draw this."] for i in range(2)]
    batch = rollout_batch(rows, tokenizer, answers)

    worker = RewardLoopWorker(cfg, None)
    assert worker.reward_manager.is_async_reward_score  # verl awaits our async compute_score

    # Before registration the service does not know the images: nothing is scored (why the script registers).
    [unknown] = worker.loop.run_until_complete(worker.compute_score_batch(batch[0:1]))
    assert unknown["reward_extra_info"]["scored"] == 0.0 and unknown["reward_score"] == 0.0

    register = shlex.split(side[-1])
    assert register[1].endswith("register_targets.py")
    proc = subprocess.run(
        [sys.executable, *register[1:]], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("registered 3 targets from 2 file(s)")  # train (2) + validation (1)

    out = worker.loop.run_until_complete(worker.compute_score_batch(batch))
    scores = np.array([o["reward_score"] for o in out]).reshape(2, 3)
    info = [o["reward_extra_info"] for o in out]
    assert [i["scored"] for i in info] == [1.0] * 6
    assert scores[:, 0] == pytest.approx([4.0, 4.0], abs=0.1)  # format + exec + code + image, all right
    assert (scores[:, 0] > scores[:, 1] + 0.3).all()  # the other figure's code scores lower
    assert (scores[:, 2] == 0.0).all() and [i["format"] for i in info][2::3] == [0.0, 0.0]
    assert set(info[0]) >= {"score", "scored", "ok", "format", "exec", "code", "image"}


def test_r1_script_starts_registers_and_stops_its_service(exported: Path, tmp_path: Path) -> None:
    """A real (not dry) run on one node without REWARD_URL, up to verl's main_ppo, stopped there by an unknown
    key: the script's own service came up, took the images, and is gone once the script exits."""
    port = free_port()
    env = script_env(
        MODEL_SIZE="4b", MODEL_PATH=str(tmp_path / "model"), DATA_DIR=str(exported / "r1"),
        REWARD_PORT=str(port), REWARD_WORKERS="1", CKPT_DIR=str(tmp_path / "ckpt"), PYTHON=sys.executable,
    )  # fmt: skip
    proc = subprocess.run(
        ["bash", str(RECIPES / "r1_grpo.sh"), "trainer.no_such_key=1"],
        capture_output=True, text=True, timeout=240, cwd=REPO, env=env,
    )  # fmt: skip
    tail = proc.stderr[-3000:]
    assert proc.returncode != 0 and "Could not override 'trainer.no_such_key'" in proc.stderr, tail
    assert f"registered 3 targets from 2 file(s) on http://127.0.0.1:{port}" in proc.stdout
    assert "Uvicorn running" in (tmp_path / "ckpt" / "reward_server.log").read_text()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_register_targets_refuses_bad_input(exported: Path, tmp_path: Path) -> None:
    script = str(RECIPES / "register_targets.py")
    env = {k: v for k, v in os.environ.items() if k != "CODEPERCEPT_REWARD_URL"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, script, *args], capture_output=True, text=True, timeout=60, env=env
        )

    r1_train = exported / "r1" / "train.parquet"
    no_url = run(str(r1_train))
    assert no_url.returncode == 2 and "no service URL" in no_url.stderr
    not_r1 = run("--url", "http://127.0.0.1:9", str(exported / "verl_sft" / "train.parquet"))
    assert not_r1.returncode == 2 and "no column(s) ['extra_info']" in not_r1.stderr
    down = run("--url", "http://127.0.0.1:9", "--wait", "1", str(r1_train))
    assert down.returncode == 1 and "not healthy after 1 s" in down.stderr
    # The service process exited and its parent (the script) has not reaped it: a zombie ends the wait too.
    exited = subprocess.Popen(["true"])
    stat = Path(f"/proc/{exited.pid}/stat")
    deadline = time.monotonic() + 20
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    dead = run("--url", "http://127.0.0.1:9", "--wait", "60", "--server-pid", str(exited.pid), str(r1_train))
    exited.wait()
    assert dead.returncode == 1 and f"process {exited.pid} exited" in dead.stderr
    assert time.monotonic() - started < 30  # no waiting for a service that is gone


# ------------------------------------------------------------------------------------------ verl_sft
def test_verl_sft_export_is_what_verls_sft_dataset_reads(exported: Path) -> None:
    """Read as MultiTurnSFTDataset reads it (pandas with the pyarrow backend, then verl's list conversion): the
    S1 records' messages, one <image> placeholder per embedded PNG."""
    import io
    import re

    import pandas as pd
    from PIL import Image
    from verl.utils.py_functional import convert_nested_value_to_list_recursive

    for split in ("train", "validation", "test"):
        frame = pd.read_parquet(exported / "verl_sft" / f"{split}.parquet", dtype_backend="pyarrow")
        s1 = [json.loads(line) for line in (exported / "s1" / f"{split}.jsonl").open()]
        assert list(frame["id"]) == [r["id"] for r in s1] and list(frame["task"]) == [r["task"] for r in s1]
        messages = frame["messages"].apply(convert_nested_value_to_list_recursive).tolist()
        assert messages == [r["messages"] for r in s1]
        for row, msgs, record in zip(frame.to_dict("records"), messages, s1, strict=True):
            placeholders = sum(len(re.findall("<image>", m["content"])) for m in msgs)
            assert placeholders == len(row["images"]) == 1
            png = row["images"][0]["bytes"]
            assert png == (exported / "s1" / record["images"][0]).read_bytes()
            assert Image.open(io.BytesIO(png)).size[0] >= 200


@pytest.mark.skipif(
    importlib.util.find_spec("qwen_vl_utils") is None,
    reason="verl's SFT dataset decodes images with qwen_vl_utils, which needs torchvision (absent on CPU here)",
)
def test_verl_sft_rows_tokenize_in_verls_sft_dataset(exported: Path, tiny_vlm) -> None:
    """Where verl's SFT stack imports (a GPU install with verl's pins): a full item, loss on the answer only."""
    try:
        from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset
    except ImportError as exc:  # verl 0.9.1 pins transformers < 5.11; newer ones renamed what it imports
        pytest.skip(f"verl's MultiTurnSFTDataset does not import here: {exc}")
    _, tokenizer, processor = tiny_vlm
    config = OmegaConf.create({"messages_key": "messages", "max_length": 8192, "pad_mode": "no_padding"})
    data = MultiTurnSFTDataset([str(exported / "verl_sft" / "train.parquet")], tokenizer, config, processor)
    item = data[1]  # the code task
    answer = tokenizer.decode(item["input_ids"][item["loss_mask"].bool()])
    assert "```python" in answer and "matplotlib code that reproduces" not in answer  # not the prompt
    assert "image_grid_thw" in item["multi_modal_inputs"]
