"""Built-in strategy ``fsdp``: PyTorch FullyShardedDataParallel through ColossalAI's
``TorchFSDPPlugin`` - the PyTorch-native comparison point for ``zero2``/``gemini``
(Zhao et al. 2023, "PyTorch FSDP").

Each LLaMA decoder layer is its own FSDP unit (``wrap_decoder_layers``), parameters,
gradients and optimizer states are sharded (``sharding_strategy``). FSDP runs with
``use_orig_params=True`` and the optimizer is built *after* wrapping, over the wrapped
module's parameters, in the same two groups as every other strategy (no weight decay on
norms and biases; :func:`cptcore.train.optim.param_groups`, decided on the unwrapped
parameters' names and shapes). ColossalAI's own path rebuilds the optimizer from
``defaults`` with one group (``booster/plugin/torch_fsdp_plugin.py:553``), which is
why :class:`FSDPStrategy` does not hand it the optimizer. Gradient clipping uses FSDP's
own ``clip_grad_norm_`` (a global norm over the shards). Checkpoints keep each rank's
own optimizer state (``optimizer/rank{R}.pt``): FSDP's gathered optimizer state drops
parameters whose shard is empty on rank 0, which broke exact resume.

Refused before training: LoRA (:data:`LORA_WHY`) and ``training.freeze`` (flat parameters need one
``requires_grad`` per unit); ``fp16`` (needs FSDP's sharded grad scaler; use bf16).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError, CptError
from ..hookspecs import hookimpl
from ..specs import Capabilities, StrategySpec
from ..train.optim import param_groups
from ..train.parallel import check_precision, make_layout
from ..train.sharded import ShardedStrategy

if TYPE_CHECKING:
    from ..config import OptimizerConfig, RunConfig

#: measured on 2 gloo ranks: peft before boost trains under FSDP(use_orig_params=True), but
#: saving the checkpoint's adapter on rank 0 runs FSDP state-dict collectives on one rank
LORA_WHY = ("TorchFSDPPlugin.enable_lora raises NotImplementedError (colossalai booster/plugin/"
            "torch_fsdp_plugin.py:566) and a peft model under FSDP trains but cptcore cannot yet save its "
            "adapter (a rank-0 state dict of FSDP-sharded parameters needs every rank); use zero2, gemini or ddp")
SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")


@dataclass(frozen=True)
class FSDPOptions:
    """Options of ``strategy: {name: fsdp, ...}`` (``torch.distributed.fsdp`` names)."""

    sharding_strategy: str = "FULL_SHARD"  # FULL_SHARD | SHARD_GRAD_OP | NO_SHARD | HYBRID_SHARD
    wrap_decoder_layers: bool = True  # one FSDP unit per decoder layer
    cpu_offload: bool = False  # CPUOffload(offload_params=True); GPU only
    sync_module_states: bool = False


def validate_fsdp(options: FSDPOptions | None, config: "RunConfig", world_size: int, model_config) -> None:
    """Pure checks: sharding strategy name, precision fp32/bf16."""
    opts = options or FSDPOptions()
    name = config.strategy.name
    if opts.sharding_strategy not in SHARDING:
        raise ConfigError(f"{name}: sharding_strategy must be one of {', '.join(SHARDING)}, got {opts.sharding_strategy!r}")
    make_layout(name, world_size)
    check_precision(name, config.strategy.precision, ("fp32", "bf16"), "fp16 needs FSDP's sharded grad scaler")


def _clean(name: str) -> str:
    """A parameter name with FSDP's wrapper prefixes removed (the unwrapped module's name)."""
    for prefix in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        name = name.replace(prefix, "")
    return name


class FSDPStrategy(ShardedStrategy):
    """FSDP through ``TorchFSDPPlugin``: wraps the model first, then builds the
    optimizer over the wrapped parameters in the decay / no-decay groups; clips with
    ``FullyShardedDataParallel.clip_grad_norm_`` (global over shards)."""

    def wrap(self, model: Any, optimizer_config: "OptimizerConfig",
             scheduler_factory: Callable[[Any], Any] | None = None) -> tuple[Any, Any, Any]:
        from colossalai.booster.plugin.torch_fsdp_plugin import FSDPOptimizerWrapper

        decay = {g_name: g["weight_decay"] for g in param_groups(model, optimizer_config.weight_decay,
                                                             optimizer_config.embedding_weight_decay)
                 for g_name in g["names"]}
        model, _, _, _, _ = self.booster.boost(model)  # no optimizer: the plugin would rebuild it in one group
        groups: dict[float, list] = {}
        for name, p in model.module.named_parameters():  # TorchFSDPModel -> FullyShardedDataParallel
            if p.requires_grad and _clean(name) in decay:
                groups.setdefault(decay[_clean(name)], []).append(p)
        optimizer = self.make_optimizer([{"params": ps, "weight_decay": wd} for wd, ps in groups.items()],
                                        optimizer_config)
        optimizer = FSDPOptimizerWrapper(optimizer, model)
        scheduler = scheduler_factory(optimizer.optim) if scheduler_factory is not None else None
        return model, optimizer, scheduler

    def save(self, ckpt_dir: str | Path, model: Any, optimizer: Any, lr_scheduler: Any) -> None:
        """``model/`` through the plugin (full, sharded files); ``optimizer/rank{R}.pt``
        this rank's own optimizer state over its shard (FSDP's full optimizer state dict
        drops the state of a parameter whose shard is empty on rank 0, so a gathered
        state would not resume exactly); ``lr_scheduler.pt``. Same world size to load."""
        import torch
        import torch.distributed as dist

        d = Path(ckpt_dir)
        self.booster.save_model(model, str(d / "model"), shard=True)
        (d / "optimizer").mkdir(parents=True, exist_ok=True)
        rank = dist.get_rank() if dist.is_initialized() else 0
        torch.save(optimizer.optim.state_dict(), d / "optimizer" / f"rank{rank}.pt")
        if lr_scheduler is not None:
            self.booster.save_lr_scheduler(lr_scheduler, str(d / "lr_scheduler.pt"))

    def load(self, ckpt_dir: str | Path, model: Any, optimizer: Any, lr_scheduler: Any) -> None:
        """Inverse of :meth:`save` (same world size and sharding).

        Raises:
            CptError: this rank's optimizer file is missing (another world size).
        """
        import torch
        import torch.distributed as dist

        d = Path(ckpt_dir)
        self.booster.load_model(model, str(d / "model"))
        rank = dist.get_rank() if dist.is_initialized() else 0
        path = d / "optimizer" / f"rank{rank}.pt"
        if not path.is_file():
            raise CptError(f"{path}: missing optimizer state for rank {rank} (checkpoint from another world size?)")
        optimizer.optim.load_state_dict(torch.load(path, weights_only=True))
        if lr_scheduler is not None:
            self.booster.load_lr_scheduler(lr_scheduler, str(d / "lr_scheduler.pt"))

    def clip_and_step(self, optimizer: Any, max_norm: float) -> float:
        fsdp = optimizer.model.module  # FSDPOptimizerWrapper -> TorchFSDPModel -> FSDP
        limit = max_norm if max_norm and max_norm > 0 else float("inf")
        norm = fsdp.clip_grad_norm_(limit)
        optimizer.step()
        return float(norm)


def build_fsdp(options: FSDPOptions | None, config: "RunConfig") -> FSDPStrategy:
    """Build the ``fsdp`` strategy (process group must exist)."""
    import torch
    from colossalai.booster.plugin import TorchFSDPPlugin
    from torch.distributed.fsdp import CPUOffload, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    opts = options or FSDPOptions()
    name = config.strategy.name
    if opts.cpu_offload and not torch.cuda.is_available():
        raise ConfigError(f"{name}: cpu_offload needs a GPU (the parameters already live on the CPU)")
    mixed = None
    if config.strategy.precision == "bf16":
        mixed = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16, buffer_dtype=torch.bfloat16)
    wrap = None
    if opts.wrap_decoder_layers:
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        wrap = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer})
    plugin = TorchFSDPPlugin(
        sharding_strategy=getattr(ShardingStrategy, opts.sharding_strategy),
        cpu_offload=CPUOffload(offload_params=True) if opts.cpu_offload else None,
        auto_wrap_policy=wrap,
        mixed_precision=mixed,
        sync_module_states=opts.sync_module_states,
    )
    plugin.fsdp_kwargs["use_orig_params"] = True  # parameter groups over the original parameters
    return FSDPStrategy(plugin, name=name, precision=config.strategy.precision,
                        gather_dir=Path(config.training.out_dir) / ".gather")


@hookimpl
def cpt_register_strategies():
    return [
        StrategySpec(
            name="fsdp",
            build=build_fsdp,
            options=FSDPOptions,
            validate=validate_fsdp,
            capabilities=Capabilities(lora=False, freeze=False, sharded_checkpoint=True, why_not={
                "lora": LORA_WHY,
                "freeze": "FSDP flat parameters need one requires_grad per unit; use zero2 or ddp"}),
            description="PyTorch FSDP via TorchFSDPPlugin (parameters, gradients, optimizer states sharded)",
        )
    ]
