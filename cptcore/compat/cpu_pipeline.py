"""HybridParallel pipeline gap on CPU: the p2p backend check uses torch APIs that torch
2.5.1 does not have."""

from __future__ import annotations

from typing import Any

from ._patch import Patch


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



PATCHES = (Patch("pipeline.p2p_hccl", "pipeline/p2p.py:159", _gap_p2p_hccl, _fill_p2p_hccl),)
