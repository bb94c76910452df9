"""Complete ColossalAI 0.5.0 on CPU-only machines (gloo), for development and CI.

ColossalAI's ``CpuAccelerator`` raises "not supported" for synchronisation, streams,
seeding and cache control, and several plugins assume CUDA. Each patch below names the
upstream gap it fills (file:line in colossalai 0.5.0, see ``/work/shared/COLOSSALAI_CPU.md``)
and carries a ``has_gap()`` check, so it is applied only when the running version still
has that gap. :func:`apply` is idempotent and does nothing when CUDA is available.

Usage (before ``Booster(...)`` / ``boost()``, after or before ``launch``)::

    from cptcore.compat import colossalai_cpu
    colossalai_cpu.apply()   # -> names of the patches applied in this call

What cannot be fixed reasonably: Gemini's ``auto`` placement accounts memory with CUDA
APIs only (``zero/gemini/placement_policy.py:206``, ``memory_monitor.py:135``); the gemini
strategy refuses it on CPU instead.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

_APPLIED: set[str] = set()  # examined (filled or not needed)
_FILLED: list[str] = []


@dataclass(frozen=True)
class Patch:
    """One upstream gap: where it is, how to detect it, how to fill it."""

    name: str
    upstream: str  # file:line in colossalai 0.5.0
    has_gap: Callable[[], bool]
    fill: Callable[[], None]


def _cpu_acc() -> Any:
    from colossalai.accelerator.cpu_accelerator import CpuAccelerator

    return CpuAccelerator


def _raises(fn: Callable[[], Any], exc: type[BaseException] = RuntimeError) -> bool:
    try:
        fn()
    except exc:
        return True
    except Exception:  # a different failure: not the gap we know how to fill
        return False
    return False


def _source_has(obj: Any, text: str) -> bool:
    try:
        return text in inspect.getsource(obj)
    except (OSError, TypeError):
        return False


# ------------------------------------------------------------ CpuAccelerator methods


class _NullStream:
    """Stand-in for a CUDA stream on CPU: work is synchronous, so waiting is a no-op."""

    def wait_stream(self, stream: Any) -> None:
        return None

    def wait_event(self, event: Any) -> None:
        return None

    def record_event(self, event: Any = None) -> Any:
        return _NullEvent()

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True


class _NullEvent:
    def record(self, stream: Any = None) -> None:
        return None

    def wait(self, stream: Any = None) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True


_NULL_STREAM = _NullStream()


def _fill_sync() -> None:
    # accelerator/cpu_accelerator.py:57 synchronize() raises; called by
    # checkpoint_io/utils.py:830 (every load_optimizer) and low_level_optim.py:470,492.
    _cpu_acc().synchronize = lambda self, device=None: None


def _fill_empty_cache() -> None:
    # accelerator/cpu_accelerator.py:160 empty_cache() raises; called after checkpoint
    # loading and by Gemini/ZeRO bookkeeping.
    _cpu_acc().empty_cache = lambda self: None


def _fill_rng_state() -> None:
    # accelerator/cpu_accelerator.py:106 passes `device` to torch.get_rng_state(), which
    # takes no argument (TypeError); shardformer/layer/utils.py:158-173 (TP dropout seeds).
    import torch

    acc = _cpu_acc()
    acc.get_rng_state = lambda self, device=None: torch.get_rng_state()
    acc.set_rng_state = lambda self, new_state, device=None: torch.set_rng_state(new_state)
    acc.get_rng_state_all = lambda self: [torch.get_rng_state()]
    acc.set_rng_state_all = lambda self, new_states: torch.set_rng_state(new_states[0])


def _fill_seed() -> None:
    # accelerator/cpu_accelerator.py:126-154 manual_seed/seed/initial_seed raise; TP layers
    # seed their dropout RNG through it (shardformer/layer/utils.py:159).
    import torch

    acc = _cpu_acc()
    acc.manual_seed = lambda self, seed: torch.manual_seed(seed) and None
    acc.manual_seed_all = lambda self, seed: torch.manual_seed(seed) and None
    acc.seed = lambda self: torch.seed() and None
    acc.seed_all = lambda self: torch.seed() and None
    acc.initial_seed = lambda self: torch.initial_seed()


def _fill_streams() -> None:
    # accelerator/cpu_accelerator.py:238-272 Stream/Event/current_stream/stream raise;
    # used by zero/low_level/bookkeeping/bucket_store.py:22, low_level_optim.py:345-349,
    # zero/gemini/gemini_ddp.py:160,405-407, gemini/chunk/manager.py:47.
    acc = _cpu_acc()
    acc.Stream = lambda self, device=None, priority=0, **kw: _NullStream()
    acc.Event = lambda self, enable_timing=False, blocking=False, interprocess=False: _NullEvent()
    acc.current_stream = lambda self, device=None: _NULL_STREAM
    acc.default_stream = lambda self, device=None: _NULL_STREAM
    acc.set_stream = lambda self, stream_: None
    acc.stream = lambda self, stream_: contextlib.nullcontext()


def _gap_sync() -> bool:
    return _raises(lambda: _cpu_acc()().synchronize())


def _gap_empty_cache() -> bool:
    return _raises(lambda: _cpu_acc()().empty_cache())


def _gap_rng_state() -> bool:
    return _raises(lambda: _cpu_acc()().get_rng_state(), TypeError)


def _gap_seed() -> bool:
    return _raises(lambda: _cpu_acc()().manual_seed(0))


def _gap_streams() -> bool:
    return _raises(lambda: _cpu_acc()().current_stream())


# ------------------------------------------------------------ LowLevelZero


def _low_level_optimizer() -> Any:
    from colossalai.zero.low_level.low_level_optim import LowLevelZeroOptimizer

    return LowLevelZeroOptimizer


def _gap_zero_device() -> bool:
    return _source_has(_low_level_optimizer()._sanity_checks, 'get_accelerator().name in ["cuda", "npu"]')


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


# ------------------------------------------------------------ pipeline p2p


def _gap_p2p_hccl() -> bool:
    import torch.distributed as dist

    return not hasattr(dist, "is_hccl_available") or not hasattr(dist.Backend, "HCCL")


def _fill_p2p_hccl() -> None:
    # pipeline/p2p.py:159-160 calls torch.distributed.is_hccl_available() and reads
    # Backend.HCCL, both absent from torch 2.5.1: every pipeline send/recv raises.
    # Decide by the process group's backend name instead.
    from colossalai.pipeline import p2p
    from torch.distributed import distributed_c10d as c10d

    def _check_for_nccl_hccl_backend(group: Any) -> bool:
        pg = group or c10d._get_default_group()
        while isinstance(pg, getattr(c10d, "_ProcessGroupWrapper", ())):
            pg = pg.wrapped_pg
        return pg.name() in ("nccl", "hccl")

    p2p._check_for_nccl_hccl_backend = _check_for_nccl_hccl_backend


# ------------------------------------------------------------ CPU Adam (Gemini, HybridAdam)


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


# ------------------------------------------------------------ Gemini chunks


def _gap_gemini_resident() -> bool:
    from colossalai.zero.gemini.chunk.manager import ChunkManager

    return _source_has(ChunkManager.access_chunk, 'if chunk.device_type == "cpu":')


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


# ------------------------------------------------------------ TorchFSDPPlugin


def _fsdp_module() -> Any:
    from colossalai.booster.plugin import torch_fsdp_plugin

    return torch_fsdp_plugin


def _gap_fsdp_device() -> bool:
    return _source_has(_fsdp_module().TorchFSDPPlugin.configure, "torch.cuda.current_device()")


@contextlib.contextmanager
def _no_cuda_device() -> Any:
    import torch

    saved = torch.cuda.current_device
    # torch FSDP needs an explicit CPU device_id when no accelerator exists (_init_utils.py:400)
    torch.cuda.current_device = lambda: torch.device("cpu")
    try:
        yield
    finally:
        torch.cuda.current_device = saved


def _fill_fsdp_device() -> None:
    # booster/plugin/torch_fsdp_plugin.py:533 wraps the model with
    # device_id=torch.cuda.current_device(), which raises without CUDA.
    plugin = _fsdp_module().TorchFSDPPlugin
    original = plugin.configure

    def configure(self: Any, model: Any, optimizer: Any = None, *args: Any, **kwargs: Any) -> Any:
        with _no_cuda_device():
            return original(self, model, optimizer, *args, **kwargs)

    plugin.configure = configure


def _adamw_rejects_own_defaults() -> bool:
    import torch

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p])
    return _raises(lambda: type(opt)([p], **opt.defaults), TypeError)


def _fill_fsdp_reinit() -> None:
    # booster/plugin/torch_fsdp_plugin.py:553 re-initialises the optimizer with
    # `**optimizer.defaults`; newer torch AdamW stores `decoupled_weight_decay` in its
    # defaults but does not accept it back. Drop keys the constructor does not take.
    plugin = _fsdp_module().TorchFSDPPlugin
    original = plugin.configure

    def configure(self: Any, model: Any, optimizer: Any = None, *args: Any, **kwargs: Any) -> Any:
        if optimizer is not None:
            accepted = inspect.signature(type(optimizer).__init__).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
                optimizer.defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
        return original(self, model, optimizer, *args, **kwargs)

    plugin.configure = configure


def _gap_fsdp_offload() -> bool:
    return _source_has(_fsdp_module(), "FullStateDictConfig(offload_to_cpu=True")


def _fill_fsdp_offload() -> None:
    # booster/plugin/torch_fsdp_plugin.py:99,184,287 gather full state dicts with
    # FullStateDictConfig(offload_to_cpu=True), which fails when the module already
    # lives on the CPU. Ask for no offload (the tensors are on the CPU anyway).
    module = _fsdp_module()
    original = module.FullStateDictConfig

    def full_state_dict_config(*args: Any, **kwargs: Any) -> Any:
        kwargs["offload_to_cpu"] = False
        return original(*args, **kwargs)

    module.FullStateDictConfig = full_state_dict_config


PATCHES: tuple[Patch, ...] = (
    Patch("accelerator.synchronize", "accelerator/cpu_accelerator.py:57", _gap_sync, _fill_sync),
    Patch("accelerator.empty_cache", "accelerator/cpu_accelerator.py:160", _gap_empty_cache, _fill_empty_cache),
    Patch("accelerator.rng_state", "accelerator/cpu_accelerator.py:106", _gap_rng_state, _fill_rng_state),
    Patch("accelerator.manual_seed", "accelerator/cpu_accelerator.py:126", _gap_seed, _fill_seed),
    Patch("accelerator.streams", "accelerator/cpu_accelerator.py:238", _gap_streams, _fill_streams),
    Patch("zero.device_assert", "zero/low_level/low_level_optim.py:254", _gap_zero_device, _fill_zero_device),
    Patch("pipeline.p2p_hccl", "pipeline/p2p.py:159", _gap_p2p_hccl, _fill_p2p_hccl),
    Patch("kernel.cpu_adam", "kernel/kernel_loader.py:75", _gap_cpu_adam, _fill_cpu_adam),
    Patch("gemini.resident_chunks", "zero/gemini/chunk/manager.py:126", _gap_gemini_resident, _fill_gemini_resident),
    Patch("fsdp.current_device", "booster/plugin/torch_fsdp_plugin.py:533", _gap_fsdp_device, _fill_fsdp_device),
    Patch("fsdp.optimizer_reinit", "booster/plugin/torch_fsdp_plugin.py:553", _adamw_rejects_own_defaults, _fill_fsdp_reinit),
    Patch("fsdp.full_state_offload", "booster/plugin/torch_fsdp_plugin.py:184", _gap_fsdp_offload, _fill_fsdp_offload),
)


def needed() -> bool:
    """True on a machine where ColossalAI runs on its CPU accelerator (no CUDA)."""
    import torch

    return not torch.cuda.is_available()


def apply() -> list[str]:
    """Fill every known gap the running ColossalAI has; return the names filled now.

    Idempotent: a patch is applied at most once per process. Does nothing (returns ``[]``)
    when CUDA is available. Imports colossalai (≈4.5 s the first time).
    """
    if not needed():
        return []
    done = []
    for patch in PATCHES:
        if patch.name in _APPLIED:
            continue
        if patch.has_gap():
            patch.fill()
            done.append(patch.name)
            _FILLED.append(patch.name)
        _APPLIED.add(patch.name)
    return done


def applied() -> list[str]:
    """Names of the patches filled so far in this process, in order."""
    return list(_FILLED)
