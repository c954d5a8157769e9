"""A vLLM without the APIs the engine drives stops with the version found and the one required."""

from __future__ import annotations

import sys
import types

import pytest

from codepercept_rl.errors import UserError
from codepercept_rl.rollout.vllm_engine import MIN_VLLM_VERSION, check_vllm


def _old_vllm(monkeypatch: pytest.MonkeyPatch, version: str, *, reload_api: bool) -> types.ModuleType:
    """A package laid out like vLLM (an ``LLM`` class, the reload module or not), importable by its name."""
    root = types.ModuleType("old_vllm")
    root.__version__ = version

    class LLM:
        def generate(self) -> None: ...

        def sleep(self) -> None: ...

    root.LLM = LLM
    monkeypatch.setitem(sys.modules, "old_vllm", root)
    if reload_api:
        reload = types.ModuleType("old_vllm.model_executor.model_loader.reload")
        reload.initialize_layerwise_reload = reload.finalize_layerwise_reload = lambda *a: None
        for name in ("old_vllm.model_executor", "old_vllm.model_executor.model_loader"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        monkeypatch.setitem(sys.modules, reload.__name__, reload)
    return root


def test_an_old_vllm_is_refused_with_both_versions_and_what_is_missing(monkeypatch) -> None:
    with pytest.raises(UserError) as e:
        check_vllm(_old_vllm(monkeypatch, "0.10.1", reload_api=False))
    msg = str(e.value)
    assert "vLLM 0.10.1 found" in msg and f">= {MIN_VLLM_VERSION}" in msg
    assert "initialize_layerwise_reload" in msg and "LLM.collective_rpc" in msg and "LLM.wake_up" in msg
    assert "LLM.sleep" not in msg  # it has that one


def test_only_the_missing_api_is_named(monkeypatch) -> None:
    with pytest.raises(UserError, match=r"missing: LLM\.collective_rpc, LLM\.wake_up\)"):
        check_vllm(_old_vllm(monkeypatch, "0.31.9", reload_api=True))


def test_the_installed_vllm_passes() -> None:
    vllm = pytest.importorskip(
        "vllm", reason="vLLM is not installed here (the vLLM job runs this in .venv-vllm)"
    )
    check_vllm(vllm)
