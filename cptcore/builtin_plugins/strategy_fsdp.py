"""Built-in strategy ``fsdp``: PyTorch FullyShardedDataParallel through ColossalAI's
``TorchFSDPPlugin`` - the PyTorch-native comparison point for ``zero2``/``gemini``
(Zhao et al. 2023, "PyTorch FSDP").

Each LLaMA decoder layer is its own FSDP unit (``wrap_decoder_layers``), parameters,
gradients and optimizer states are sharded (``sharding_strategy``). The plugin rebuilds
the optimizer inside ``boost`` over FSDP's flat parameters with one parameter group
(``booster/plugin/torch_fsdp_plugin.py:553``), so weight decay applies to every
parameter, norms and biases included. Gradient clipping uses FSDP's own
``clip_grad_norm_`` (a global norm over the shards).

Refused before training: LoRA (``TorchFSDPPlugin.enable_lora`` raises
NotImplementedError) and ``training.freeze`` (flat parameters need one
``requires_grad`` per unit); ``fp16`` (needs FSDP's sharded grad scaler; use bf16).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..hookspecs import hookimpl
from ..specs import StrategySpec

SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")


@dataclass(frozen=True)
class FSDPOptions:
    """Options of ``strategy: {name: fsdp, ...}`` (``torch.distributed.fsdp`` names)."""

    sharding_strategy: str = "FULL_SHARD"  # FULL_SHARD | SHARD_GRAD_OP | NO_SHARD | HYBRID_SHARD
    wrap_decoder_layers: bool = True  # one FSDP unit per decoder layer
    cpu_offload: bool = False  # CPUOffload(offload_params=True); GPU only
    sync_module_states: bool = False


def validate_fsdp(options: FSDPOptions | None, config, world_size: int, model_config) -> None:
    """Pure checks: sharding strategy name, precision fp32/bf16, refused combinations."""
    from ..errors import ConfigError
    from ..train.parallel import check_combination, check_precision, make_layout

    opts = options or FSDPOptions()
    name = config.strategy.name
    if opts.sharding_strategy not in SHARDING:
        raise ConfigError(f"{name}: sharding_strategy must be one of {', '.join(SHARDING)}, got {opts.sharding_strategy!r}")
    make_layout(name, world_size)
    check_precision(name, config.strategy.precision, ("fp32", "bf16"), "fp16 needs FSDP's sharded grad scaler")
    check_combination(
        name, lora=config.lora.enabled, freeze=config.training.freeze != "none",
        refuse={"lora": "TorchFSDPPlugin.enable_lora is not implemented in ColossalAI 0.5.0; use zero2 or ddp",
                "freeze": "FSDP flat parameters need one requires_grad per unit; use zero2 or ddp"},
    )


def _fsdp_optimizer(param_groups: list[dict], opt_cfg) -> object:
    import torch

    # one group, decay everywhere: the plugin re-creates the optimizer from `defaults`
    params = [p for g in param_groups for p in g["params"]]
    return torch.optim.AdamW(params, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps,
                             weight_decay=opt_cfg.weight_decay, foreach=False)


def _make_strategy_class():
    from ..train.sharded import ShardedStrategy

    class FSDPStrategy(ShardedStrategy):
        """Clips with ``FullyShardedDataParallel.clip_grad_norm_`` (global over shards)."""

        def clip_and_step(self, optimizer, max_norm: float) -> float:
            fsdp = optimizer.model.module  # FSDPOptimizerWrapper -> TorchFSDPModel -> FSDP
            limit = max_norm if max_norm and max_norm > 0 else float("inf")
            norm = fsdp.clip_grad_norm_(limit)
            optimizer.step()
            return float(norm)

    return FSDPStrategy


def build_fsdp(options: FSDPOptions | None, config) -> object:
    """Build the ``fsdp`` strategy (process group must exist)."""
    import functools
    from pathlib import Path

    import torch
    from colossalai.booster.plugin import TorchFSDPPlugin
    from torch.distributed.fsdp import CPUOffload, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    from ..errors import ConfigError

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
    return _make_strategy_class()(
        plugin,
        name=name,
        precision=config.strategy.precision,
        optimizer_factory=_fsdp_optimizer,
        supports_lora=False,
        supports_freeze=False,
        gather_dir=Path(config.training.out_dir) / ".gather",
    )


@hookimpl
def cpt_register_strategies():
    return [
        StrategySpec(
            name="fsdp",
            build=build_fsdp,
            options=FSDPOptions,
            validate=validate_fsdp,
            description="PyTorch FSDP via TorchFSDPPlugin (parameters, gradients, optimizer states sharded)",
        )
    ]
