"""Built-in strategy ``ddp``: PyTorch DistributedDataParallel through ColossalAI's
``TorchDDPPlugin``. The backend follows the accelerator: gloo on CPU, nccl on GPU.
Every rank holds the full model and optimizer; gradients are all-reduced (averaged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..hookspecs import hookimpl
from ..specs import StrategySpec
from ..train.strategy import BoosterStrategy

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass(frozen=True)
class DDPOptions:
    """Options of ``strategy: {name: ddp, ...}`` (``TorchDDPPlugin``'s argument names)."""

    bucket_cap_mb: int = 25  # gradient all-reduce bucket size, MiB
    broadcast_buffers: bool = True
    find_unused_parameters: bool = False
    gradient_as_bucket_view: bool = False
    static_graph: bool = False


def build_ddp(options: DDPOptions | None, config: "RunConfig") -> BoosterStrategy:
    """Build the ``ddp`` :class:`~cptcore.train.strategy.BoosterStrategy` (process group must exist)."""
    from colossalai.booster.plugin import TorchDDPPlugin

    opts = options or DDPOptions()
    plugin = TorchDDPPlugin(
        bucket_cap_mb=opts.bucket_cap_mb,
        broadcast_buffers=opts.broadcast_buffers,
        find_unused_parameters=opts.find_unused_parameters,
        gradient_as_bucket_view=opts.gradient_as_bucket_view,
        static_graph=opts.static_graph,
    )
    return BoosterStrategy(plugin, name="ddp", precision=config.strategy.precision)


@hookimpl
def cpt_register_strategies():
    return [
        StrategySpec(
            name="ddp",
            build=build_ddp,
            options=DDPOptions,
            description="PyTorch DDP via ColossalAI TorchDDPPlugin (full replica per rank; gloo on CPU, nccl on GPU)",
        )
    ]
