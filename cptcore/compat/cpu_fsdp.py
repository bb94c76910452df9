"""TorchFSDPPlugin gaps on CPU: CUDA device id, optimizer re-initialisation with newer
torch, and full-state-dict offload."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

from ._patch import Patch, raises, source_has


def _fsdp_module() -> Any:
    from colossalai.booster.plugin import torch_fsdp_plugin

    return torch_fsdp_plugin


def _gap_fsdp_device() -> bool:
    return source_has(_fsdp_module().TorchFSDPPlugin.configure, "torch.cuda.current_device()")


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
    return raises(lambda: type(opt)([p], **opt.defaults), TypeError)


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
    return source_has(_fsdp_module(), "FullStateDictConfig(offload_to_cpu=True")


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



PATCHES = (
    Patch("fsdp.current_device", "booster/plugin/torch_fsdp_plugin.py:533", _gap_fsdp_device, _fill_fsdp_device),
    Patch("fsdp.optimizer_reinit", "booster/plugin/torch_fsdp_plugin.py:553", _adamw_rejects_own_defaults, _fill_fsdp_reinit),
    Patch("fsdp.full_state_offload", "booster/plugin/torch_fsdp_plugin.py:184", _gap_fsdp_offload, _fill_fsdp_offload),
)
