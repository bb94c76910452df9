"""Built-in strategies ``gemini`` and ``gemini_auto``: ColossalAI's ``GeminiPlugin``,
chunk-based ZeRO-3 with heterogeneous (device/CPU) placement (Fang et al. 2022,
PatrickStar; ColossalAI docs "Gemini").

* ``gemini`` (``placement_policy="static"``): parameters, gradients and optimizer states
  sharded in chunks; ``shard_param_frac``, ``offload_optim_frac`` and
  ``offload_param_frac`` say which fraction is sharded or kept on the CPU.
* ``gemini_auto`` (``placement_policy="auto"``): placement decided at run time from
  measured CUDA memory. GPU only: its memory accounting uses CUDA APIs
  (``zero/gemini/placement_policy.py:206``, ``gemini/memory_tracer/memory_monitor.py:135``),
  so it is refused on CPU before training.

Gradient accumulation sets ``enable_gradient_accumulation``; on CPU the compat patch
``gemini.accumulate_gathered`` fixes upstream's over-counting of earlier micro-batches
in gathered chunks (``zero/gemini/chunk/manager.py:290``).

Gemini accepts only ColossalAI's HybridAdam/CPUAdam/FusedAdam
(``zero/gemini/gemini_optimizer.py:121``): this strategy builds HybridAdam (AdamW mode,
same betas/eps/weight-decay groups as the default optimizer). Gemini trains in bf16 or
fp16 only. LoRA: ``GeminiPlugin.enable_lora`` raises NotImplementedError
(``booster/plugin/gemini_plugin.py:709``), but a peft model built before ``boost`` trains:
Gemini ignores the frozen base weights (``zero/gemini/gemini_ddp.py:826``, kept whole in
bf16/fp16 on every rank, not sharded) and shards the adapters. DoRA is refused
(:data:`DORA_WHY`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..compat import colossalai_cpu
from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..specs import Capabilities, StrategySpec
from ..train.parallel import check_precision, make_layout
from ..train.sharded import ShardedStrategy, plugin_max_norm

if TYPE_CHECKING:
    from ..config import OptimizerConfig, RunConfig


DORA_WHY = ("DoRA's magnitude vector is computed from the frozen base weight each forward; not tested "
            "under Gemini's chunks (only LoRA and rsLoRA are); use zero2 or ddp")


@dataclass(frozen=True)
class GeminiOptions:
    """Options of ``strategy: {name: gemini, ...}`` (``GeminiPlugin``'s names)."""

    placement_policy: str = "static"  # static | auto (auto: GPU only)
    shard_param_frac: float = 1.0  # static: fraction of parameters sharded over ranks
    offload_optim_frac: float = 0.0  # static: fraction of optimizer states kept on CPU
    offload_param_frac: float = 0.0  # static: fraction of parameters kept on CPU (needs offload_optim_frac=1)
    pin_memory: bool = False  # pinned CPU buffers for offloaded chunks (GPU only)
    initial_scale: float = 2.0**16  # fp16 loss scale start
    max_prefetch: int = 0  # chunks prefetched ahead of use
    enable_async_reduce: bool = True


def validate_gemini(options: GeminiOptions | None, config: "RunConfig", world_size: int, model_config) -> None:
    """Pure checks: placement, fractions in [0, 1], bf16/fp16 only (LoRA and CPU:
    the spec's capabilities)."""

    opts = options or GeminiOptions()
    name = config.strategy.name
    if opts.placement_policy not in ("static", "auto"):
        raise ConfigError(f"{name}: placement_policy must be static or auto, got {opts.placement_policy!r}")
    for key in ("shard_param_frac", "offload_optim_frac", "offload_param_frac"):
        value = getattr(opts, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name}: {key} must be within [0, 1], got {value}")
    if opts.offload_param_frac > 0 and opts.offload_optim_frac < 1.0:
        raise ConfigError(f"{name}: offload_param_frac > 0 needs offload_optim_frac=1.0 (GeminiPlugin rule)")
    make_layout(name, world_size)
    check_precision(name, config.strategy.precision, ("bf16", "fp16"), "Gemini keeps fp32 master chunks for half-precision training only")


def capabilities(options: GeminiOptions | None) -> Capabilities:
    """No LoRA; ``placement_policy=auto`` needs CUDA."""
    why = {"dora": DORA_WHY}
    auto = (options or GeminiOptions()).placement_policy == "auto"
    if auto:
        why["cpu"] = ("placement_policy=auto needs CUDA (Gemini measures CUDA memory to place chunks); "
                      "use gemini (static) on CPU")
    return Capabilities(dora=False, cpu=not auto, sharded_checkpoint=True, why_not=why)


class GeminiStrategy(ShardedStrategy):
    """Saves Gemini's fp32 master chunks (this rank's shards, in parameter order)
    beside the checkpoint: with gradient accumulation Gemini's own checkpoint
    restores the masters from the half-precision weights, which rounds them."""

    @staticmethod
    def _masters(optimizer: Any) -> list:
        chunks: list = []
        for chunk16 in optimizer.param_to_chunk16.values():
            if all(chunk16 is not c for c in chunks):
                chunks.append(chunk16)
        return [c.paired_chunk.payload for c in chunks if c.paired_chunk is not None]


def hybrid_adam_factory(param_groups: list[dict], opt_cfg: "OptimizerConfig") -> Any:
    """HybridAdam in AdamW mode over ``param_groups`` (each with its ``weight_decay``).

    On CPU its step runs through the pure-torch CPU Adam op installed by
    :mod:`cptcore.compat.colossalai_cpu` (same update as ``torch.optim.AdamW``)."""
    from colossalai.nn.optimizer import HybridAdam

    return HybridAdam(param_groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps,
                      weight_decay=opt_cfg.weight_decay, adamw_mode=True)


def build_gemini(options: GeminiOptions | None, config: "RunConfig") -> GeminiStrategy:
    """Build the Gemini :class:`~cptcore.train.sharded.ShardedStrategy`."""
    from colossalai.booster.plugin import GeminiPlugin

    colossalai_cpu.apply()  # HybridAdam needs the CPU Adam op before the optimizer is built
    opts = options or GeminiOptions()
    accumulate = config.training.accumulation_steps > 1 or config.training.global_batch_tokens is not None
    kwargs = dict(
        placement_policy=opts.placement_policy,
        precision=config.strategy.precision,
        pin_memory=opts.pin_memory,
        initial_scale=opts.initial_scale,
        max_norm=plugin_max_norm(config.optimizer.grad_clip),
        max_prefetch=opts.max_prefetch,
        enable_async_reduce=opts.enable_async_reduce,
        enable_gradient_accumulation=accumulate,
    )
    if opts.placement_policy == "static":
        kwargs.update(shard_param_frac=opts.shard_param_frac, offload_optim_frac=opts.offload_optim_frac,
                      offload_param_frac=opts.offload_param_frac)
    plugin = GeminiPlugin(**kwargs)
    return GeminiStrategy(
        plugin,
        name=config.strategy.name,
        precision=config.strategy.precision,
        optimizer_factory=hybrid_adam_factory,
        save_master_weights=True,
        strict_load=False,  # tied lm_head.weight: written by the sharded saver, "unexpected" to the loader
        gather_dir=Path(config.training.out_dir) / ".gather",
    )


@hookimpl
def cpt_register_strategies():
    common = dict(build=build_gemini, options=GeminiOptions, validate=validate_gemini, capabilities=capabilities)
    return [
        StrategySpec(name="gemini", preset={"placement_policy": "static"},
                     description="Gemini (chunked ZeRO-3, static placement; bf16/fp16) with HybridAdam", **common),
        StrategySpec(name="gemini_auto", preset={"placement_policy": "auto"},
                     description="Gemini with auto (memory-driven) placement; GPU only", **common),
    ]
