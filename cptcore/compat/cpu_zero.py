"""ZeRO-family gaps on CPU: LowLevelZero's device assert, the missing CPU Adam kernel
(CPUAdam/HybridAdam, which Gemini requires), and Gemini moving already-resident chunks."""

from __future__ import annotations

import math
from typing import Any

from ._patch import Patch, source_has


def _low_level_optimizer() -> Any:
    from colossalai.zero.low_level.low_level_optim import LowLevelZeroOptimizer

    return LowLevelZeroOptimizer


def _gap_zero_device() -> bool:
    return source_has(_low_level_optimizer()._sanity_checks, 'get_accelerator().name in ["cuda", "npu"]')


def _fill_zero_device() -> None:
    # zero/low_level/low_level_optim.py:254 asserts the accelerator is cuda or npu. Our
    # check keeps the dtype invariant the rest of that method enforces.
    def _sanity_checks(self: Any) -> None:
        for group in self.optim.param_groups:
            for param in group["params"]:
                if getattr(param, "skip_zero_check", False):
                    continue
                if param.dtype != self._dtype:
                    raise AssertionError(
                        f"ZeRO expects every parameter in {self._dtype}, got {param.dtype}"
                    )

    _low_level_optimizer()._sanity_checks = _sanity_checks



class _TorchCPUAdamOp:
    """Pure-torch stand-in for the ``cpu_adam`` kernel's ``CPUAdamOptimizer`` object.

    Same call as the C++ op (``kernel/extensions/csrc/kernel/x86/cpu_adam.cpp``): updates
    ``param``, ``exp_avg``, ``exp_avg_sq`` (fp32 tensors of one shape) in place from
    ``grad``; ``div_scale > 0`` divides the gradient first (loss-scale removal); AdamW
    decay ``param *= 1 - lr * wd`` when ``adamw_mode``, else L2 added to the gradient.
    Adam: Kingma & Ba 2015; AdamW: Loshchilov & Hutter 2019.
    """

    def __init__(self, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, adamw_mode: bool):
        self.adamw_mode = bool(adamw_mode)

    def step(self, step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
             bias_correction: bool, param: Any, grad: Any, exp_avg: Any, exp_avg_sq: Any,
             div_scale: float = -1) -> None:
        g = grad.to(param.dtype)
        if div_scale > 0:
            g = g / div_scale
        if weight_decay > 0:
            if self.adamw_mode:
                param.mul_(1.0 - lr * weight_decay)
            else:
                g = g.add(param, alpha=weight_decay)
        exp_avg.mul_(beta1).add_(g, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        bc1 = 1.0 - beta1**step if bias_correction else 1.0
        bc2 = 1.0 - beta2**step if bias_correction else 1.0
        denom = (exp_avg_sq.sqrt() / math.sqrt(bc2)).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-lr / bc1)


class _TorchCPUAdamModule:
    CPUAdamOptimizer = _TorchCPUAdamOp


def _gap_cpu_adam() -> bool:
    from colossalai.kernel.kernel_loader import CPUAdamLoader

    return not any(ext().is_available() for ext in CPUAdamLoader.REGISTRY)


def _fill_cpu_adam() -> None:
    # kernel/kernel_loader.py:75: no CPU Adam kernel is usable (the x86 extension is a
    # CUDA extension), so CPUAdam/HybridAdam (nn/optimizer/cpu_adam.py:81) cannot be
    # built, and Gemini accepts only those (zero/gemini/gemini_optimizer.py:121).
    from colossalai.kernel.kernel_loader import CPUAdamLoader

    original = CPUAdamLoader.load

    def load(self: Any, ext_name: str | None = None) -> Any:
        if any(ext().is_available() for ext in type(self).REGISTRY):
            return original(self, ext_name)
        return _TorchCPUAdamModule

    CPUAdamLoader.load = load



def _gap_gemini_resident() -> bool:
    from colossalai.zero.gemini.chunk.manager import ChunkManager

    return source_has(ChunkManager.access_chunk, 'if chunk.device_type == "cpu":')


def _fill_gemini_resident() -> None:
    # zero/gemini/chunk/manager.py:126 moves a chunk whose device_type is "cpu" to the
    # compute device; when the compute device *is* the CPU the chunk is already resident
    # (and gathered), so chunk.py:330 `assert not self.is_gathered` trips. Skip the move.
    from colossalai.accelerator import get_accelerator
    from colossalai.zero.gemini.chunk.chunk import Chunk

    original = Chunk.shard_move

    def shard_move(self: Any, device: Any, force_copy: bool = False, non_blocking: bool = False) -> None:
        if get_accelerator().name == "cpu" and device.type == "cpu" and self.is_gathered:
            return None
        return original(self, device, force_copy=force_copy, non_blocking=non_blocking)

    Chunk.shard_move = shard_move



PATCHES = (
    Patch("zero.device_assert", "zero/low_level/low_level_optim.py:254", _gap_zero_device, _fill_zero_device),
    Patch("kernel.cpu_adam", "kernel/kernel_loader.py:75", _gap_cpu_adam, _fill_cpu_adam),
    Patch("gemini.resident_chunks", "zero/gemini/chunk/manager.py:126", _gap_gemini_resident, _fill_gemini_resident),
)


def _gap_gemini_accumulation() -> bool:
    from colossalai.zero.gemini.chunk.manager import ChunkManager

    fn = ChunkManager.rearrange_accumulated_grad_chunk
    return source_has(fn, "cuda_global_chunk.clone().detach().mul_(chunk.pg_size)")


def _fill_gemini_accumulation() -> None:
    # zero/gemini/chunk/manager.py:290: with gradient accumulation, a *gathered* grad chunk
    # (keep_gathered: small chunks, all small models on CPU) backs up the reduced
    # gradient times pg_size on every rank, then all-reduces (sums) and divides by
    # pg_size again: the earlier micro-batches count pg_size times. The times-pg_size
    # backup is right only for sharded chunks, where one rank holds each shard.
    from colossalai.zero.gemini.chunk.manager import ChunkManager

    original = ChunkManager.rearrange_accumulated_grad_chunk

    def rearrange_accumulated_grad_chunk(self: Any, chunk: Any) -> Any:
        if not chunk.grad_chunk.is_gathered:
            return original(self, chunk)
        backup = chunk.grad_chunk.cuda_global_chunk.clone().detach()
        grad_chunk = self.init_grad_chunk(chunk)
        grad_chunk.cuda_global_chunk.zero_()
        grad_chunk.cuda_global_chunk.add_(backup)
        return grad_chunk

    ChunkManager.rearrange_accumulated_grad_chunk = rearrange_accumulated_grad_chunk


PATCHES = (*PATCHES, Patch("gemini.accumulate_gathered", "zero/gemini/chunk/manager.py:290",
                           _gap_gemini_accumulation, _fill_gemini_accumulation))
