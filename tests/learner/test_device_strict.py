"""The learner's collectives on a device-strict process group: two gloo ranks where, as under NCCL, a tensor
not put on the rank's device cannot take part (see ``device_strict.py``). Training, no-grad log-probs and the
validation loss sum run with uneven micro-batch counts (``_aligned`` pads one rank), so every collective runs."""

from __future__ import annotations

import pytest

from codepercept_rl.config.schema import RayConfig
from codepercept_rl.learner.actor import run_on_ranks
from tests.learner.device_strict import run_strict


@pytest.mark.timeout(300)
def test_collectives_use_device_tensors_only():
    r0, r1 = run_on_ranks(run_strict, 2, True, ray_cfg=RayConfig(enabled=False))
    # The reductions agree on both ranks ...
    assert r0["loss"] == r1["loss"] > 0 and r0["grad_norm"] == r1["grad_norm"] > 0
    assert r0["val"] == r1["val"]
    # ... and the validation sum is the sum of both ranks' log-probs (same weights, after the step), so the
    # padded rank's extra forward counted nothing.
    assert r0["tokens"] == 2 * r1["tokens"]
    assert r0["val"] == pytest.approx(-(r0["logprob_sum"] + r1["logprob_sum"]), rel=1e-5)
