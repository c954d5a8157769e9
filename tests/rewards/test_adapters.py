"""The same rewards served to TRL, verl and OpenRLHF, each called the way that framework calls it."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from codepercept_rl.rewards import get_reward
from codepercept_rl.rewards.adapters import openrlhf
from codepercept_rl.rewards.adapters import verl as verl_adapter
from codepercept_rl.rewards.adapters.trl import TRLReward
from reward_servers.pool import RewardPool
from reward_servers.server import BackgroundServer, create_app
from tests.rewards.conftest import REF, WRONG, fence
from tests.service import served


@pytest.fixture(scope="module")
def service(pool: RewardPool, target_png: bytes) -> Iterator[str]:
    """The reward HTTP service over the module's pool, on 127.0.0.1."""
    with BackgroundServer(create_app(pool)) as server:
        yield server.url


@pytest.fixture(scope="module")
def target_file(tmp_path_factory: pytest.TempPathFactory, target_png: bytes) -> Path:
    path = tmp_path_factory.mktemp("targets") / "ref.png"
    path.write_bytes(target_png)
    return path


# ------------------------------------------------------------------------------------------- backends
def test_a_reward_runs_unchanged_on_a_local_pool_and_on_remote_services(
    pool: RewardPool, service: str
) -> None:
    from codepercept_rl.config.schema import RewardConfig
    from codepercept_rl.rewards import RewardBackend, RewardSample, compute_rewards, make_backend
    from reward_servers.client import RewardClient

    client = make_backend(RewardConfig(server_urls=[service]))
    try:
        assert isinstance(client, RewardClient)
        assert isinstance(client, RewardBackend) and isinstance(pool, RewardBackend)
        samples = [RewardSample(fence(c), target_id="ref", reference_code=REF) for c in (REF, WRONG)]
        samples.append(RewardSample(fence(REF), target_id="unknown"))
        for name in ("codepercept", "caption_grounded"):
            local = compute_rewards(get_reward(name), samples, pool)
            remote = compute_rewards(get_reward(name), samples, client)
            assert remote.scores == pytest.approx(local.scores) and remote.statuses == local.statuses
    finally:
        client.close()


# ----------------------------------------------------------------------------------------------- TRL
def test_trl_reward_called_like_grpo_trainer(pool: RewardPool, target_png: bytes) -> None:
    from trl.trainer.utils import get_callable_name, is_async_callable

    fn = TRLReward(get_reward("render_similarity"), pool)
    assert is_async_callable(fn) and get_callable_name(fn) == "render_similarity"
    image = Image.open(io.BytesIO(target_png)).convert("RGB")
    completions = [
        [{"role": "assistant", "content": fence(REF)}],
        [{"role": "assistant", "content": [{"type": "text", "text": fence(WRONG)}]}],
        [{"role": "assistant", "content": "no code, sorry"}],
        [{"role": "assistant", "content": None}],
        [{"role": "assistant", "content": fence(REF)}],
    ]
    prompts = [[{"role": "user", "content": "Reproduce this figure."}]] * 5
    logged_metrics: dict[str, list[float]] = {}
    logged_extra: dict[str, list] = {}
    # GRPOTrainer._calculate_rewards: every column but prompt/completion as a list, plus the three extras.
    scores = asyncio.run(
        fn(
            prompts=prompts,
            completions=completions,
            completion_ids=[[1, 2]] * 5,
            image=[image] * 4
            + [b"not a png"],  # an undecodable image: that sample falls back to the reference
            reference_code=[REF] * 5,
            trainer_state=None,
            log_extra=lambda column, values: logged_extra.setdefault(column, []).extend(values),
            log_metric=lambda name, value: logged_metrics.setdefault(name, []).append(value),
        )
    )
    assert len(scores) == 5
    assert scores[0] == pytest.approx(1.0, abs=0.02)  # the PIL image re-encoded is the same target
    assert 0.0 < scores[1] < 0.9
    assert scores[2] == 0.0
    assert scores[3] is None  # TRL turns None into NaN and leaves it out of the group statistics
    assert scores[4] == pytest.approx(1.0, abs=0.02)  # the reference's render is the target
    assert logged_extra["render_similarity/status"] == ["ok", "ok", "no_code", "bad_input", "ok"]
    assert logged_metrics["render_similarity/edge"][0] > 0.0


def test_trl_reward_in_a_grpo_trainer_step(pool: RewardPool, target_png: bytes, tmp_path: Path) -> None:
    """One real GRPOTrainer step with a tiny offline model, our reward as its only reward function."""
    datasets = pytest.importorskip("datasets")
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    from codepercept_rl.models.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    tokenizer: PreTrainedTokenizerFast = build_tokenizer(512, n_programs=200)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    calls: list[int] = []

    class Counting(TRLReward):
        async def __call__(self, prompts, completions, completion_ids=None, **kwargs):  # type: ignore[override]
            calls.append(len(completions))
            return await super().__call__(prompts, completions, completion_ids, **kwargs)

    reward_fn = Counting(get_reward("codepercept"), pool)
    train = datasets.Dataset.from_dict({"prompt": ["Draw the figure:\n"] * 2, "reference_code": [REF] * 2})
    args = GRPOConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, num_generations=2,
        max_completion_length=8, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        bf16=False, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model, reward_funcs=[reward_fn], args=args, train_dataset=train, processing_class=tokenizer
    )
    trainer.train()
    assert calls and sum(calls) >= 2
    logged = trainer.state.log_history[0]
    assert "rewards/codepercept/mean" in logged
    statuses = {k: v for k, v in logged.items() if k.startswith("codepercept/status/")}
    assert statuses and sum(statuses.values()) == pytest.approx(1.0)  # our statuses reached TRL's logs


# ---------------------------------------------------------------------------------------------- verl
def test_verl_compute_score_over_http(
    service: str, target_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(verl_adapter.URL_ENV, raising=False)
    perfect = asyncio.run(
        verl_adapter.compute_score(
            "codepercept", fence(REF), REF, {"target_path": str(target_file)}, reward_url=service
        )
    )
    assert perfect["score"] == pytest.approx(4.0, abs=0.05) and perfect["scored"] == 1.0
    assert set(perfect) == {"score", "scored", "ok", "format", "exec", "code", "image"}
    monkeypatch.setenv(verl_adapter.URL_ENV, service)
    label = json.dumps({"reference_code": REF, "target_id": "ref"})
    wrong = asyncio.run(verl_adapter.compute_score("codepercept", fence(WRONG), label, {}))
    assert 1.0 < wrong["score"] < 3.5
    missing = verl_adapter.compute_score_sync("x", fence(REF), {"target_id": "nope"}, {}, reward_name="rlrf")
    assert missing == {"score": 0.0, "scored": 0.0, "ok": 0.0, "recon": 0.0, "edge": 0.0, "length": 0.0}
    malformed = verl_adapter.compute_score_sync("x", fence(REF), ["not", "a", "label"], {})
    assert malformed["scored"] == 0.0  # a bad row is reported, not raised
    monkeypatch.delenv(verl_adapter.URL_ENV)
    with pytest.raises(ValueError, match="no reward service URL"):
        asyncio.run(verl_adapter.compute_score("x", "y", REF, {}))


def _verl_batch(tokenizer, responses: list[str], ground_truths: list, extra_infos: list[dict]):
    import torch
    from verl import DataProto

    prompt = tokenizer("Reproduce the figure.")["input_ids"]
    encoded = [tokenizer(r)["input_ids"] for r in responses]
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id
    responses_t = torch.tensor([e + [pad] * (width - len(e)) for e in encoded])
    prompts_t = torch.tensor([prompt] * len(responses))
    mask = torch.tensor([[1] * len(prompt) + [1] * len(e) + [0] * (width - len(e)) for e in encoded])
    return DataProto.from_dict(
        tensors={
            "prompts": prompts_t,
            "responses": responses_t,
            "input_ids": torch.cat([prompts_t, responses_t], dim=1),
            "attention_mask": mask,
        },
        non_tensors={
            "data_source": np.array(["codepercept"] * len(responses), dtype=object),
            "reward_model": np.array([{"ground_truth": g} for g in ground_truths], dtype=object),
            "extra_info": np.array(extra_infos, dtype=object),
        },
    )


@pytest.mark.verl
def test_inside_verls_own_reward_managers(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("verl", reason="verl is not installed (pip install --no-deps verl tensordict ...)")
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager as LoopManager
    from verl.workers.reward_manager.naive import NaiveRewardManager

    from codepercept_rl.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(512, n_programs=200)
    responses = [fence(REF), fence(WRONG), "I give up."]
    monkeypatch.setenv(verl_adapter.URL_ENV, service)
    data = _verl_batch(tokenizer, responses, [REF] * 3, [{"target_id": "ref"} for _ in responses])
    # verl's legacy manager (synchronous compute_score), as its trainer calls it.
    legacy = NaiveRewardManager(tokenizer, num_examine=0, compute_score=verl_adapter.compute_score_sync)
    result = legacy(data, return_dict=True)
    rewards = result["reward_tensor"].sum(dim=1).tolist()
    assert rewards[0] == pytest.approx(4.0, abs=0.05) and 1.0 < rewards[1] < 3.5 and rewards[2] == 0.0
    assert result["reward_extra_info"]["exec"] == [1.0, 1.0, 0.0]
    # verl's reward-loop manager awaits the async compute_score on its own event loop.
    monkeypatch.delenv(verl_adapter.URL_ENV)
    one = _verl_batch(tokenizer, [fence(WRONG)], [REF], [{"target_id": "ref", "reward_url": service}])
    manager = LoopManager(None, tokenizer, verl_adapter.compute_score)
    assert manager.is_async_reward_score
    out = manager.loop.run_until_complete(manager.run_single(one))
    assert out["reward_score"] == pytest.approx(rewards[1])
    assert out["reward_extra_info"]["scored"] == 1.0


# ------------------------------------------------------------------------------------------ OpenRLHF
def test_openrlhf_remote_reward_contract(pool: RewardPool, target_file: Path) -> None:
    app = openrlhf.create_app(get_reward("render_similarity"), pool, target_root=str(target_file.parent))
    prompt = "<|im_start|>user\nReproduce the figure.<|im_end|>\n<|im_start|>assistant\n"
    labels = [
        json.dumps({"target_path": str(target_file)}),
        json.dumps({"target_id": "ref"}),
        REF,  # a plain label is the reference code (its render is the target)
        json.dumps({"target_path": "/etc/hostname"}),  # outside --target-root: no target, no reference
    ]
    body = {
        "query": [prompt + fence(REF), prompt + fence(WRONG), prompt + fence(REF), prompt + fence(REF)],
        "prompts": [prompt] * 4,
        "labels": labels,
    }
    with BackgroundServer(app) as server:
        response = httpx.post(server.url + "/get_reward", json=body, timeout=60)
        bad = httpx.post(server.url + "/get_reward", json={"query": "x"}, timeout=10)
        mismatched = httpx.post(server.url + "/get_reward", json={"query": ["a"], "labels": []}, timeout=10)
    assert response.status_code == 200
    data = response.json()
    assert data["rewards"][0] == pytest.approx(1.0, abs=0.02)
    assert data["rewards"][1] < 0.9
    assert data["rewards"][2] == pytest.approx(1.0, abs=0.02)
    assert data["rewards"][3] == 0.0 and data["extra_logs"]["scored"] == [1.0, 1.0, 1.0, 0.0]
    assert all(0.0 <= s <= 1.0 for s in data["scores"])
    assert set(data["extra_logs"]) == {"format", "exec", "ssim", "edge", "pixel", "trace", "scored"}
    assert all(len(v) == 4 for v in data["extra_logs"].values())
    assert bad.status_code == 400 and mismatched.status_code == 400


def test_openrlhf_server_main_in_its_own_process(tmp_path: Path) -> None:
    """``main(argv)`` as OpenRLHF users run it: a separate process with its own sandbox pool, real HTTP."""
    args = ["--workers", "1", "--reward", "render_similarity", "--weight", "format=0.5"]
    with served("codepercept_rl.rewards.adapters.openrlhf", *args) as (url, _):
        body = {"query": ["Q: " + fence(REF), "Q: nothing"], "prompts": ["Q: ", "Q: "], "labels": [REF, REF]}
        data = httpx.post(url + "/get_reward", json=body, timeout=60).json()
    assert data["rewards"][0] == pytest.approx(1.4, abs=0.02)  # weights: format 0.5 + the default 0.9 rest
    assert data["rewards"][1] == 0.0 and data["extra_logs"]["scored"] == [1.0, 1.0]


def test_openrlhf_main_refuses_bad_options() -> None:
    with pytest.raises(SystemExit, match="NAME=NUMBER"):
        openrlhf.main(["--weight", "edge"])
    with pytest.raises(SystemExit, match="unknown reward"):
        openrlhf.main(["--reward", "nope"])
    assert openrlhf.response_of("PROMPT answer", "PROMPT ") == "answer"
    assert openrlhf.response_of("other", "PROMPT ") == "other"
