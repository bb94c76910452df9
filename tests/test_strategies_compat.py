"""cptcore.compat.colossalai_cpu: each patch names its gap, applies once, only without
CUDA, and fills the gap it claims to (checked in-process; the torchrun tests exercise
every plugin end to end)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only compatibility patches")


def test_patches_name_their_upstream_gap():
    from cptcore.compat import colossalai_cpu as c

    import colossalai

    root = Path(colossalai.__file__).parent
    assert len({p.name for p in c.PATCHES}) == len(c.PATCHES)
    for patch in c.PATCHES:
        assert re.fullmatch(r"[a-z0-9_/]+\.py:\d+", patch.upstream), patch
        path, line = patch.upstream.split(":")
        assert len((root / path).read_text().splitlines()) >= int(line), patch.upstream


def test_apply_is_idempotent_and_fills_the_accelerator():
    from colossalai.accelerator.cpu_accelerator import CpuAccelerator

    from cptcore.compat import colossalai_cpu as c

    first = c.apply()
    assert c.apply() == []  # second call: nothing left to do
    filled = c.applied()
    assert set(first) <= set(filled)
    # on colossalai 0.5.0 every known gap is present
    assert {"accelerator.synchronize", "accelerator.device_count", "accelerator.rng_state", "accelerator.streams", "zero.device_assert",
            "pipeline.p2p_hccl", "kernel.cpu_adam", "gemini.resident_chunks", "gemini.accumulate_gathered",
            "fsdp.current_device"} <= set(filled)
    acc = CpuAccelerator()
    acc.synchronize()
    acc.empty_cache()
    state = acc.get_rng_state()
    a = torch.rand(3)
    acc.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)
    acc.manual_seed(7)
    b = torch.rand(2)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(2), b)
    stream = acc.Stream()
    stream.wait_stream(acc.current_stream())
    with acc.stream(stream):
        pass
    # every gap check now reports the gap as filled
    for patch in c.PATCHES:
        if patch.name in filled and patch.name.startswith("accelerator"):
            assert not patch.has_gap(), patch.name


def test_no_patch_when_cuda_is_available(monkeypatch):
    from cptcore.compat import colossalai_cpu as c

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(c, "_APPLIED", set())
    assert c.apply() == []
    assert c._APPLIED == set()


def test_torch_cpu_adam_op_matches_torch_adamw():
    """The pure-torch op behind CPUAdam/HybridAdam gives torch.optim.AdamW's update."""
    from cptcore.compat.cpu_zero import _TorchCPUAdamOp

    torch.manual_seed(0)
    p_ref = torch.nn.Parameter(torch.randn(5, 3))
    p = p_ref.detach().clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    ref = torch.optim.AdamW([p_ref], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False)
    op = _TorchCPUAdamOp(1e-2, 0.9, 0.95, 1e-8, 0.1, True)
    for step in range(1, 4):
        g = torch.randn(5, 3)
        p_ref.grad = g.clone()
        ref.step()
        op.step(step, 1e-2, 0.9, 0.95, 1e-8, 0.1, True, p, g * 4.0, m, v, div_scale=4.0)  # loss-scaled grad
        torch.testing.assert_close(p, p_ref.detach(), rtol=1e-6, atol=1e-7)


def test_hybrid_adam_builds_and_steps_on_cpu():
    from colossalai.nn.optimizer import HybridAdam

    from cptcore.compat import colossalai_cpu as c

    c.apply()
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.ones(4))
    opt = HybridAdam([w], lr=0.1, weight_decay=0.0)
    w.grad = torch.full((4,), 2.0)
    opt.step()
    # first Adam step moves each weight by lr * sign(grad) (bias-corrected m/sqrt(v) = 1)
    torch.testing.assert_close(w.detach(), torch.full((4,), 0.9), rtol=0, atol=1e-6)
