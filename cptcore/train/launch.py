"""Process-group setup and launching: one process, under ``torchrun``, or
``cpt train --nproc-per-node N`` which execs ``torchrun`` itself; plus the plugin
fingerprint every rank compares at start.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from typing import Any, Sequence

from ..errors import CptError, ConfigError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(seed: int) -> tuple[int, int]:
    """Create the default process group through ``colossalai.launch`` (gloo on CPU, nccl
    on CUDA - ColossalAI picks the backend from the accelerator). Under ``torchrun`` the
    rank/world come from its environment variables; otherwise a one-process group on a
    free local port is created. Idempotent.

    Returns:
        ``(rank, world_size)``.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    import colossalai

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    colossalai.launch(
        rank=rank,
        world_size=world,
        host=os.environ["MASTER_ADDR"],
        port=int(os.environ["MASTER_PORT"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        seed=seed,
        verbose=False,
    )
    return rank, world


def plugin_fingerprint(pm: Any) -> str:
    """sha256 (hex, 16 chars) of the sorted registered plugin names with their sources
    and versions, plus the versions of cptcore, torch, colossalai and transformers."""
    import colossalai
    import torch
    import transformers

    from .. import __version__

    plugins = sorted(
        f"{name}:{info.source}:{info.version}" for name, info in getattr(pm, "info", {}).items()
    )
    payload = {
        "plugins": plugins,
        "versions": [__version__, torch.__version__, colossalai.__version__, transformers.__version__],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def check_fingerprints(pm: Any) -> str:
    """All-gather every rank's :func:`plugin_fingerprint`; raise on any mismatch.

    Raises:
        CptError: "plugin fingerprint differs across ranks: rank 0 abc..., rank 1 def..."
    """
    import torch.distributed as dist

    mine = plugin_fingerprint(pm)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return mine
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if len(set(everyone)) > 1:
        listing = ", ".join(f"rank {i} {fp}" for i, fp in enumerate(everyone))
        raise CptError(f"plugin fingerprint differs across ranks (same plugins and versions needed): {listing}")
    return mine


def torchrun_argv(
    argv: Sequence[str], nproc_per_node: int, nnodes: int = 1, node_rank: int = 0,
    master_addr: str | None = None, master_port: int | None = None,
) -> list[str]:
    """The ``torchrun`` command line that re-runs ``cpt`` with ``argv`` (minus the
    launcher flags) on ``nproc_per_node`` processes.

    Raises:
        ConfigError: ``nproc_per_node < 1``, ``nnodes < 1`` or ``node_rank`` out of range,
            or several nodes without ``--master-addr``.
    """
    if nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node must be >= 1, got {nproc_per_node}")
    if nnodes < 1 or not 0 <= node_rank < nnodes:
        raise ConfigError(f"--node-rank {node_rank} must be in [0, --nnodes {nnodes})")
    if nnodes > 1 and not master_addr:
        raise ConfigError("--nnodes > 1 needs --master-addr (the address of node 0)")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
           f"--nnodes={nnodes}", f"--node-rank={node_rank}",
           f"--master-addr={master_addr or '127.0.0.1'}",
           # one node: any free port; several: every node must name the same one
           f"--master-port={master_port or (_free_port() if nnodes == 1 else 29500)}",
           "-m", "cptcore.cli.main"]
    return cmd + strip_launcher_flags(list(argv))


_LAUNCHER_FLAGS = {"--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port"}


def strip_launcher_flags(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc-per-node N`` and the other launcher flags."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _LAUNCHER_FLAGS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def exec_torchrun(cmd: list[str]) -> int:
    """Run ``cmd`` (from :func:`torchrun_argv`) with ``OMP_NUM_THREADS=1`` unless set,
    and return its exit status."""
    import subprocess

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.call(cmd, env=env)


def in_launched_process() -> bool:
    """True when this process was started by torchrun (``LOCAL_RANK`` and ``WORLD_SIZE`` set)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ
