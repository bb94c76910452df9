"""Loading a ColossalAI checkpoint never executes code from it (all devices, not only CPU).

ColossalAI 0.5.0 reads checkpoint files with ``torch.load(path)``, and torch 2.5.1's
default is ``weights_only=False``: a pickle in ``lr_scheduler.pt`` or in a model or
optimizer shard runs its payload while loading. Its index reader also joins every shard
name of ``*.index.json`` to the folder unchecked, so ``"../../x.bin"`` loads a file from
anywhere. Each :class:`~cptcore.compat._patch.Patch` below fills one such gap (named by
its upstream file:line):

* the ``torch.load`` sites: the module's global ``torch`` is replaced by
  :class:`WeightsOnlyTorch`, the same module except that ``load`` always passes
  ``weights_only=True`` (tensors, plain containers, numbers and strings only);
* the index reader: names that leave the index's folder are refused.

:func:`apply` is idempotent; :func:`cptcore.train.checkpoint.load_checkpoint` calls it
before any ColossalAI loader runs. Imports colossalai.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from ._patch import Patch, apply_patches
from ..train.integrity import inside


class WeightsOnlyTorch:
    """Stands in for the ``torch`` module inside one ColossalAI module: every attribute
    is torch's, but :meth:`load` forces ``weights_only=True``."""

    def __init__(self, torch: Any) -> None:
        self.__dict__["_torch"] = torch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._torch, name)

    def load(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return self._torch.load(*args, **kwargs)


def _module(name: str) -> Any:
    return importlib.import_module(f"colossalai.{name}")


def _unsafe_torch_load(module_name: str) -> Callable[[], bool]:
    """Gap probe: the module still calls ``torch.load`` through the real torch module."""

    def has_gap() -> bool:
        import torch

        try:
            module = _module(module_name)
            source = inspect.getsource(module)
        except (ImportError, OSError, TypeError):  # not installed in this version: nothing to patch
            return False
        return getattr(module, "torch", None) is torch and "torch.load(" in source

    return has_gap


def _weights_only_in(module_name: str) -> Callable[[], None]:
    def fill() -> None:
        import torch

        _module(module_name).torch = WeightsOnlyTorch(torch)

    return fill


def _load_gap(name: str, module_name: str, upstream: str) -> Patch:
    return Patch(name, upstream, _unsafe_torch_load(module_name), _weights_only_in(module_name))


# --- gaps: torch.load without weights_only (one per upstream module) -------------------

# checkpoint_io/utils.py:685 load_shard_state_dict (model and optimizer shards of every
# plugin), :748 load_param_groups_into_optimizer (optimizer param groups), :915
# load_state_dict (unsharded model files)
_UTILS = _load_gap("safe_load.checkpoint_utils", "checkpoint_io.utils", "checkpoint_io/utils.py:685")
# checkpoint_io/checkpoint_io_base.py:431 CheckpointIO.load_lr_scheduler (lr_scheduler.pt)
_LR = _load_gap("safe_load.lr_scheduler", "checkpoint_io.checkpoint_io_base", "checkpoint_io/checkpoint_io_base.py:431")
# checkpoint_io/hybrid_parallel_checkpoint_io.py:697 load_sharded_optimizer (param groups, hybrid3d)
_HYBRID = _load_gap("safe_load.hybrid_optimizer", "checkpoint_io.hybrid_parallel_checkpoint_io",
                    "checkpoint_io/hybrid_parallel_checkpoint_io.py:697")
# booster/plugin/gemini_plugin.py:345 GeminiCheckpointIO.load_sharded_optimizer (param groups)
_GEMINI = _load_gap("safe_load.gemini_optimizer", "booster.plugin.gemini_plugin", "booster/plugin/gemini_plugin.py:345")
# booster/plugin/torch_fsdp_plugin.py:386 TorchFSDPCheckpointIO.load_sharded_optimizer (param groups)
_FSDP = _load_gap("safe_load.fsdp_optimizer", "booster.plugin.torch_fsdp_plugin", "booster/plugin/torch_fsdp_plugin.py:386")
# checkpoint_io/moe_checkpoint.py:566 MoECheckpointIO.load_sharded_optimizer (param groups)
_MOE = _load_gap("safe_load.moe_optimizer", "checkpoint_io.moe_checkpoint", "checkpoint_io/moe_checkpoint.py:566")


# --- gap: shard names of an index file are not checked ----------------------------------

def _index_class() -> Any:
    return _module("checkpoint_io.index_file").CheckpointIndexFile


def _gap_index_names() -> bool:
    return not getattr(_index_class().load, "cpt_checks_names", False)


def _fill_index_names() -> None:
    # checkpoint_io/index_file.py:58-63 CheckpointIndexFile.load keeps weight_map values and
    # metadata["param_groups"] as read; index_file.py:125,170 and
    # hybrid_parallel_checkpoint_io.py:414,723 join them to the folder unchecked.
    cls = _index_class()
    original = cls.load

    def load(self: Any, json_path: str) -> None:
        original(self, json_path)
        folder = self.root_path
        for name in sorted(set((self.weight_map or {}).values())):
            inside(folder, str(name), f"shard name in {json_path}")
        group = (self.metadata or {}).get("param_groups")
        if group:
            inside(folder, str(group), f"param_groups file in {json_path}")

    load.cpt_checks_names = True  # type: ignore[attr-defined]
    cls.load = load


_INDEX = Patch("safe_load.index_names", "checkpoint_io/index_file.py:58", _gap_index_names, _fill_index_names)

PATCHES: tuple[Patch, ...] = (_UTILS, _LR, _HYBRID, _GEMINI, _FSDP, _MOE, _INDEX)

_APPLIED: set[str] = set()


def apply() -> list[str]:
    """Fill every gap above that the running ColossalAI has, on any device; return the
    names filled in this call. Idempotent."""
    return apply_patches(PATCHES, _APPLIED)
