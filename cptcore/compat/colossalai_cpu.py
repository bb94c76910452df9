"""Complete ColossalAI 0.5.0 on CPU-only machines (gloo), for development and CI.

ColossalAI's ``CpuAccelerator`` raises "not supported" for synchronisation, streams,
seeding and cache control, and several plugins assume CUDA. Each patch (one module per
gap family: ``cpu_accelerator``, ``cpu_zero``, ``cpu_pipeline``, ``cpu_fsdp``,
``cpu_sp``) names the upstream gap it fills (file:line in colossalai 0.5.0; the list is
in docs/strategies.md, "CPU support")
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

from . import cpu_accelerator, cpu_fsdp, cpu_pipeline, cpu_sp, cpu_zero
from ._patch import Patch, apply_patches

# One module per upstream gap family (the single file outgrew ~400 lines); this module
# is the only entry point.
PATCHES: tuple[Patch, ...] = (
    *cpu_accelerator.PATCHES, *cpu_zero.PATCHES, *cpu_pipeline.PATCHES, *cpu_fsdp.PATCHES, *cpu_sp.PATCHES,
)

_APPLIED: set[str] = set()  # examined (filled or not needed)
_FILLED: list[str] = []


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
    done = apply_patches(PATCHES, _APPLIED)
    _FILLED.extend(done)
    return done


def applied() -> list[str]:
    """Names of the patches filled so far in this process, in order."""
    return list(_FILLED)

