"""Colocated vLLM on two FSDP2 learner ranks (gloo, spawned processes), as on an 8-GPU node but on CPU.

Each rank builds a vLLM engine inside the learners' process group (``external_launcher``): with
``tensor_model_parallel_size=1`` two engines that generate different prompts, with 2 one engine sharded over
both ranks. After a real optimizer step and the bucketed sync (every rank all-gathers each entry and loads it,
or its tensor-parallel slice), greedy tokens and log-probs must equal the learner's HF forward of the gathered
weights. vLLM on CPU has no sleep mode; ``test_vllm_colocated.py`` checks the CUDA call order.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here (make test-vllm runs this in .venv-vllm)")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from codepercept_rl.config.schema import ModelConfig, RayConfig  # noqa: E402
from codepercept_rl.learner import Learner, LearnerConfig  # noqa: E402
from codepercept_rl.learner.actor import run_on_ranks  # noqa: E402
from tests.rollout.vllm_ranks_worker import run_rank  # noqa: E402

MAX_PROMPT, RESPONSE = 448, 16


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("ranks")
    torch.set_num_threads(1)
    cfg = LearnerConfig(model=ModelConfig(tiny_preset="nano", tiny_arch="qwen3_vl"), total_steps=1)
    folder = Learner(cfg).export_hf(root / "s1")
    Image.new("RGB", (64, 64), "green").save(root / "0.png")
    messages = [{"role": "user", "content": "<image>Draw this."},
                {"role": "assistant", "content": "```python\nplt.bar(['a', 'b'], [1, 2])\n```"}]  # fmt: skip
    (root / "s1.jsonl").write_text(
        json.dumps({"id": "r0", "task": "code", "images": ["0.png"], "messages": messages})
    )
    return str(folder), str(root)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("tp", [1, 2], ids=["two-engines", "one-engine-tp2"])
def test_ranks_stream_their_shards_into_their_engines_and_match_the_learners_forward(export, tp) -> None:
    folder, data = export
    ranks = run_on_ranks(
        run_rank, 2, folder, data, tp, MAX_PROMPT, RESPONSE, ray_cfg=RayConfig(enabled=False)
    )
    hf = ranks[0]["hf"]
    diffs = []
    for r in ranks:
        assert r["tp"] == tp
        assert r["largest"] > r["bucket_bytes"] and r["buckets"] > 2
        assert r["sent"] > 0
        for k, group in zip(r["prompts"], r["after"], strict=True):
            (tokens, logprobs), (hf_tokens, hf_logprobs) = group[0], hf[k][0]
            assert tokens == hf_tokens, f"rank {r['rank']} prompt {k}"
            diffs += [abs(a - b) for a, b in zip(logprobs, hf_logprobs, strict=True)]
        moved = max(abs(a - b) for ga, gb in zip(r["after"], r["before"], strict=True)
                    for a, b in zip(ga[0][1], gb[0][1], strict=False))  # fmt: skip
        assert moved > 1e-3  # the step reached this rank's engine
    if tp == 2:  # one engine: both ranks drew the same completions
        assert ranks[0]["after"] == ranks[1]["after"]
    else:  # two engines, one prompt each
        assert [r["prompts"] for r in ranks] == [[0], [1]]
    print(
        f"tp={tp}: max abs log-prob diff vLLM vs learner HF forward {max(diffs):.2e} over {len(diffs)} tokens"
    )
    assert max(diffs) < 5e-4
