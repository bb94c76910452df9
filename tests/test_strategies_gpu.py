"""GPU-only strategy checks (skipped without CUDA): real optimizer offload, Gemini auto
placement, flash attention under hybrid3d, and that the CPU patches stay off."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cpu_patches_stay_off_with_cuda():
    from cptcore.compat import colossalai_cpu

    assert colossalai_cpu.apply() == []
    assert colossalai_cpu.applied() == []


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from cptcore.testing import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", vocab_size=128)


def _run(tiny_model, tmp_path, *argv, accum=1):
    from test_strategies_torchrun import run_worker

    return run_worker(tiny_model, tmp_path, *argv, accum=accum, nproc=min(2, torch.cuda.device_count()))


@pytest.mark.parametrize("argv", [
    ["zero2_cpu", "strategy.precision=bf16"],  # optimizer states and step really on the host
    ["gemini_auto", "strategy.precision=bf16"],
    ["gemini", "strategy.precision=bf16", "strategy.offload_optim_frac=1.0", "strategy.offload_param_frac=0.5"],
])
def test_offload_trains_and_resumes_exactly(tiny_model, tmp_path, argv):
    res = _run(tiny_model, tmp_path, *argv)
    assert res["probe_after_load"] == res["probe_at_save"]
    assert res["resumed_losses"] == res["losses"][2:]


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn")
def test_hybrid3d_flash_attention(tiny_model, tmp_path):
    res = _run(tiny_model, tmp_path, "hybrid3d", "strategy.precision=bf16", "strategy.enable_flash_attention=true")
    assert res["resumed_losses"] == res["losses"][2:]
