"""ColossalAI 0.5.0 ``CpuAccelerator`` (``accelerator/cpu_accelerator.py``): the methods
it refuses on CPU that the plugins call (synchronisation, cache, RNG, seeding, streams,
device count)."""

from __future__ import annotations

import contextlib
from typing import Any

from ._patch import Patch, raises


def _cpu_acc() -> Any:
    from colossalai.accelerator.cpu_accelerator import CpuAccelerator

    return CpuAccelerator


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
    return raises(lambda: _cpu_acc()().synchronize())


def _gap_empty_cache() -> bool:
    return raises(lambda: _cpu_acc()().empty_cache())


def _gap_rng_state() -> bool:
    return raises(lambda: _cpu_acc()().get_rng_state(), TypeError)


def _gap_seed() -> bool:
    return raises(lambda: _cpu_acc()().manual_seed(0))


def _gap_streams() -> bool:
    return raises(lambda: _cpu_acc()().current_stream())



def _fill_device_count() -> None:
    # accelerator/cpu_accelerator.py:73 device_count() raises; the fp16 loss scaler calls it
    # (amp/naive_amp/grad_scaler/dynamic_grad_scaler.py:41). One CPU "device" per process.
    _cpu_acc().device_count = lambda self: 1


def _gap_device_count() -> bool:
    return raises(lambda: _cpu_acc()().device_count())


PATCHES = (
    Patch("accelerator.synchronize", "accelerator/cpu_accelerator.py:57", _gap_sync, _fill_sync),
    Patch("accelerator.empty_cache", "accelerator/cpu_accelerator.py:160", _gap_empty_cache, _fill_empty_cache),
    Patch("accelerator.rng_state", "accelerator/cpu_accelerator.py:106", _gap_rng_state, _fill_rng_state),
    Patch("accelerator.manual_seed", "accelerator/cpu_accelerator.py:126", _gap_seed, _fill_seed),
    Patch("accelerator.streams", "accelerator/cpu_accelerator.py:238", _gap_streams, _fill_streams),
    Patch("accelerator.device_count", "accelerator/cpu_accelerator.py:73", _gap_device_count, _fill_device_count),
)
