"""``Learner.iter_full_params`` on two gloo ranks: the colocated engine's per-parameter weight stream."""

from __future__ import annotations

import torch

from codepercept_rl.config.schema import RayConfig
from codepercept_rl.learner import Learner
from codepercept_rl.learner.actor import run_on_ranks
from codepercept_rl.learner.dist import destroy_distributed
from tests.learner.parity_worker import CFG


def _stream_vs_state_dict() -> dict[str, object]:
    torch.set_num_threads(1)
    learner = Learner(CFG)
    sharded = sum(
        isinstance(v, torch.distributed.tensor.DTensor) for v in learner.model.state_dict().values()
    )
    whole = learner.state_dict_for_rollout()  # rank 0 only; every rank joins
    streamed = [(name, t.cpu().clone()) for name, t in learner.iter_full_params()]
    bf16 = [(name, t.cpu()) for name, t in learner.iter_full_params(torch.bfloat16)]
    destroy_distributed()
    if not learner.dist.is_main:
        return {"rank": learner.dist.rank, "count": len(streamed), "whole": len(whole)}
    return {
        "rank": 0,
        "names": [n for n, _ in streamed],
        "whole_names": list(whole),
        "unequal": [n for n, t in streamed if not torch.equal(t, whole[n]) or t.dtype != whole[n].dtype],
        "bf16_unequal": [n for n, t in bf16 if not torch.equal(t, whole[n].to(torch.bfloat16))],
        "sharded": sharded,
    }


def test_every_streamed_tensor_is_bit_exact_vs_the_gathered_state_dict() -> None:
    rank0, rank1 = run_on_ranks(_stream_vs_state_dict, 2, ray_cfg=RayConfig(enabled=False))
    assert rank0["names"] == rank0["whole_names"]  # same names, same order as state_dict_for_rollout
    assert rank0["sharded"] > 0  # FSDP2 DTensors: each one an all-gather
    assert rank0["unequal"] == [] and rank0["bf16_unequal"] == []
    # The other rank gathers every entry too (the same collectives, in the same order) but gets no state dict.
    assert rank1["count"] == len(rank0["names"]) and rank1["whole"] == 0
