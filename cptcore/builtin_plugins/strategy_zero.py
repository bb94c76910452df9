"""Built-in strategies ``zero1``, ``zero2`` and ``zero2_cpu``: ZeRO data parallelism
through ColossalAI's ``LowLevelZeroPlugin`` (Rajbhandari et al. 2020, ZeRO).

* ``zero1``: optimizer states (fp32 master weights, Adam moments) sharded over ranks.
* ``zero2``: optimizer states and gradients sharded.
* ``zero2_cpu``: ``zero2`` with ``cpu_offload=True`` (states and the optimizer step on
  the CPU; on a GPU machine this trades step time for device memory).

Every rank keeps full working (bf16/fp16/fp32) parameters, so export needs no gather.
On CPU, ``overlap_communication`` is forced off (``record_stream`` is CUDA-only,
``zero/low_level/low_level_optim.py:343``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..specs import Capabilities, StrategySpec
from ..train.parallel import check_precision, make_layout
from ..train.sharded import ShardedStrategy, plugin_max_norm

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass(frozen=True)
class ZeroOptions:
    """Options of ``strategy: {name: zero2, ...}`` (``LowLevelZeroPlugin``'s names)."""

    stage: int = 2  # 1: shard optimizer states; 2: also gradients
    cpu_offload: bool = False  # optimizer states + step on CPU
    initial_scale: float = 2.0**16  # fp16 loss scale start (upstream 2**32 overflows every step on CPU)
    reduce_bucket_size_in_m: int = 12  # gradient reduce bucket, millions of elements
    overlap_communication: bool = True  # overlap grad reduction with backward (forced off on CPU)
    master_weights: bool = True  # keep fp32 master weights for bf16/fp16


def validate_zero(options: ZeroOptions | None, config: "RunConfig", world_size: int, model_config) -> None:
    """Pure checks: stage in {1, 2}; precision; LoRA/freeze/noise are allowed."""

    opts = options or ZeroOptions()
    name = config.strategy.name
    if opts.stage not in (1, 2):
        raise ConfigError(f"{name}: stage must be 1 or 2, got {opts.stage}")
    make_layout(name, world_size)
    check_precision(name, config.strategy.precision, ("bf16", "fp16", "fp32"))
    if opts.initial_scale <= 0:
        raise ConfigError(f"{name}: initial_scale must be > 0, got {opts.initial_scale}")


def build_zero(options: ZeroOptions | None, config: "RunConfig") -> ShardedStrategy:
    """Build the ZeRO :class:`~cptcore.train.sharded.ShardedStrategy` (process group must exist)."""
    import torch
    from colossalai.booster.plugin import LowLevelZeroPlugin

    opts = options or ZeroOptions()
    on_gpu = torch.cuda.is_available()
    plugin = LowLevelZeroPlugin(
        stage=opts.stage,
        precision=config.strategy.precision,
        initial_scale=opts.initial_scale,
        max_norm=plugin_max_norm(config.optimizer.grad_clip),
        reduce_bucket_size_in_m=opts.reduce_bucket_size_in_m,
        overlap_communication=opts.overlap_communication and on_gpu,
        cpu_offload=opts.cpu_offload,
        master_weights=opts.master_weights,
    )
    return ShardedStrategy(
        plugin,
        name=config.strategy.name,
        precision=config.strategy.precision,
        full_params_local=True,
        save_master_weights=config.strategy.precision != "fp32",
        gather_dir=Path(config.training.out_dir) / ".gather",
    )


@hookimpl
def cpt_register_strategies():
    common = dict(build=build_zero, options=ZeroOptions, validate=validate_zero,
                  capabilities=Capabilities(sharded_checkpoint=True))
    return [
        StrategySpec(name="zero1", preset={"stage": 1},
                     description="ZeRO-1 via LowLevelZeroPlugin: optimizer states sharded over ranks", **common),
        StrategySpec(name="zero2", preset={"stage": 2},
                     description="ZeRO-2 via LowLevelZeroPlugin: optimizer states and gradients sharded", **common),
        StrategySpec(name="zero2_cpu", preset={"stage": 2, "cpu_offload": True},
                     description="ZeRO-2 with optimizer states and step offloaded to CPU (cpu_offload=True)",
                     **common),
    ]
