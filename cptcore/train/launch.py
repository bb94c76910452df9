"""Process-group setup and launching: one process, under ``torchrun``, or
``cpt train --nproc-per-node N`` which runs torchrun's elastic agent in its own process
(:func:`launch`); plus the plugin fingerprint every rank compares at start.

The launcher is the ranks' parent, so their lifetime is tied to it
(:mod:`cptcore.train.lifetime`); several nodes first check in at node 0
(:mod:`cptcore.train.rendezvous`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import cptcore  # cptcore.__version__ read at call time (a plugin may skew it on one rank: tested)
from ..errors import ConfigError, CptError
from .lifetime import LAUNCHER_PID_ENV
from .rendezvous import report_failure, roll_call

if TYPE_CHECKING:
    from ..plugins import CptPluginManager

DEFAULT_MASTER_PORT = 29500
DEFAULT_RENDEZVOUS_TIMEOUT_S = 300.0


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


_GROUP_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def process_group(seed: int) -> Iterator[tuple[int, int]]:
    """:func:`init_distributed` for the length of one run: on exit the process group is
    destroyed and the variables a one-process group set (``RANK``, ``WORLD_SIZE``,
    ``MASTER_PORT``, ...) are put back as they were, so a later ``cpt train
    --nproc-per-node`` started from this process is not taken for one of torchrun's
    ranks. Under torchrun the variables were there before and stay.

    Yields:
        ``(rank, world_size)``.
    """
    import torch.distributed as dist

    before = {key: os.environ.get(key) for key in _GROUP_ENV}
    try:
        yield init_distributed(seed)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def plugin_fingerprint(pm: CptPluginManager) -> str:
    """sha256 (hex, 16 chars) of the sorted registered plugin names with their sources
    and versions, plus the versions of cptcore, torch, colossalai and transformers."""
    import colossalai
    import torch
    import transformers

    plugins = sorted(
        f"{name}:{info.source}:{info.version}" for name, info in getattr(pm, "info", {}).items()
    )
    payload = {
        "plugins": plugins,
        "versions": [cptcore.__version__, torch.__version__, colossalai.__version__, transformers.__version__],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def check_fingerprints(pm: CptPluginManager) -> str:
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
    rendezvous_timeout: float = DEFAULT_RENDEZVOUS_TIMEOUT_S,
) -> list[str]:
    """The ``torchrun`` command line that re-runs ``cpt`` with ``argv`` (minus the
    launcher flags) on ``nproc_per_node`` processes; ``rendezvous_timeout`` (seconds)
    bounds torchrun's own static rendezvous.

    Raises:
        ConfigError: ``nproc_per_node < 1``, ``nnodes < 1`` or ``node_rank`` out of range,
            several nodes without ``--master-addr``, ``rendezvous_timeout <= 0``, or
            ``master_port`` outside [1, 65535].
    """
    if nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node must be >= 1, got {nproc_per_node}")
    if nnodes < 1 or not 0 <= node_rank < nnodes:
        raise ConfigError(f"--node-rank {node_rank} must be in [0, --nnodes {nnodes})")
    if nnodes > 1 and not master_addr:
        raise ConfigError("--nnodes > 1 needs --master-addr (the address of node 0)")
    if not rendezvous_timeout > 0:
        raise ConfigError(f"--rendezvous-timeout must be > 0 seconds, got {rendezvous_timeout:g}")
    if master_port is not None and not 1 <= master_port <= 65535:  # 0 was taken for "not given"
        raise ConfigError(f"--master-port must be in [1, 65535], got {master_port}")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
           f"--nnodes={nnodes}", f"--node-rank={node_rank}",
           f"--master-addr={master_addr or '127.0.0.1'}",
           # one node: any free port; several: every node must name the same one
           f"--master-port={master_port or (_free_port() if nnodes == 1 else DEFAULT_MASTER_PORT)}",
           f"--rdzv-conf=timeout={max(1, round(rendezvous_timeout))}",
           "-m", "cptcore.cli.main"]
    return cmd + strip_launcher_flags(list(argv))


_LAUNCHER_FLAGS = {"--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port",
                   "--rendezvous-timeout"}


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


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (the form every error is printed in)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def launch(
    argv: Sequence[str], nproc_per_node: int, nnodes: int = 1, node_rank: int = 0,
    master_addr: str | None = None, master_port: int | None = None,
    rendezvous_timeout: float = DEFAULT_RENDEZVOUS_TIMEOUT_S,
    precheck: Callable[[], Any] | None = None, echo: Callable[[str], None] = print,
) -> int:
    """Start this node's ranks: check the launcher flags, run ``precheck`` (every cheap
    check, before any process starts), check in with every other node
    (:func:`cptcore.train.rendezvous.roll_call`, several nodes only), then run torchrun's
    elastic agent in this process (:func:`run_torchrun`).

    A node > 0 whose ``precheck`` fails tells node 0 (best effort,
    :func:`cptcore.train.rendezvous.report_failure`) before raising.

    Returns:
        0 when every rank of this node succeeded; ``128 + signal`` when the launcher was
        stopped by SIGTERM/SIGINT/SIGHUP/SIGQUIT (forwarded to the ranks); 1 when a rank
        failed and its node's local rank 0 has printed the reason already.

    Raises:
        ConfigError: bad launcher flags (see :func:`torchrun_argv`).
        CptError: whatever ``precheck`` raises.
        RendezvousError: a node missing at the timeout, node 0 unreachable, a node that
            failed before starting.
        RankFailed: a rank failed and no rank printed why.
    """

    cmd = torchrun_argv(argv, nproc_per_node, nnodes, node_rank, master_addr, master_port, rendezvous_timeout)
    port = int(next(a for a in cmd if a.startswith("--master-port=")).split("=", 1)[1])
    addr = master_addr or "127.0.0.1"
    try:
        if precheck is not None:
            precheck()
    except CptError as exc:
        if nnodes > 1 and node_rank > 0:
            report_failure(addr, port, node_rank, one_line(exc))
        raise
    store = roll_call(addr, port, node_rank, nnodes, rendezvous_timeout, echo) if nnodes > 1 else None
    try:
        return run_torchrun(cmd[3:])  # node 0's store stays alive: torchrun's rendezvous reuses it
    finally:
        del store


class RankFailed(CptError):
    """A launched rank failed (exit status, signal, or its one-line error)."""


def run_torchrun(args: list[str]) -> int:
    """Run torchrun (``torch.distributed.run``) with ``args`` in this process, so that
    this process is the ranks' parent: each rank dies with it
    (:func:`cptcore.train.lifetime.tie_to_launcher`, via ``$CPT_LAUNCHER_PID``), and
    SIGTERM/SIGINT/SIGHUP/SIGQUIT to it are forwarded to the ranks by torchrun's agent
    (SIGKILL after 30 s). Sets ``OMP_NUM_THREADS=1`` unless set and drops any inherited
    ``RANK``/``WORLD_SIZE``/... variables.

    Returns:
        0 on success, ``128 + signal`` when stopped by a signal, 1 when a rank failed and
        its node's local rank 0 printed the one-line error.

    Raises:
        RankFailed: a rank failed and no local rank 0 printed why: names the first rank
            to fail and its error, exit status or signal.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    try:
        run(parse_args(args))
    except ChildFailedError as exc:
        failures = exc.failures
        if any(f.local_rank == 0 and (f.error_file_data or {}).get("cpt_printed") for f in failures.values()):
            return 1
        rank, first = exc.get_first_failure()
        data = first.error_file_data or {}
        if isinstance(data.get("message"), str) and "cpt_printed" in data:
            why = data["message"]
        elif first.exitcode < 0:
            why = f"killed by signal {first.signal_name()}"
        else:
            why = f"exit status {first.exitcode} (its traceback is above)"
        others = f"; {len(failures) - 1} more rank(s) failed" if len(failures) > 1 else ""
        raise RankFailed(f"rank {rank} (local rank {first.local_rank}) failed: {why}{others}") from None
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0


def in_launched_process() -> bool:
    """True when this process was started by torchrun (``LOCAL_RANK`` and ``WORLD_SIZE`` set)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ
