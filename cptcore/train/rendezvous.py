"""Multi-node roll call before torchrun's rendezvous: every node's launcher checks in at
node 0, so a node that never arrives is named within a timeout instead of node 0
waiting in torchrun's rendezvous with no word (torchrun's static rendezvous waits 600 s,
then says only how many clients joined).

Node 0 hosts a ``torch.distributed.TCPStore`` at ``--master-addr:--master-port``
(``multi_tenant=True``: torchrun's static rendezvous in the same process reuses this
very server, so no second port is needed and nothing is closed under anyone). Every
node increments ``cpt/roll/<node_rank>``; every node then waits until all
``0 … nnodes-1`` are present. A node that failed before it could start (its precheck
raised) posts its one-line error under ``cpt/fail/<node_rank>`` when node 0 is
reachable, and the others stop at once with that message.
"""

from __future__ import annotations

import datetime
import socket
import time
from typing import Any, Callable

from ..errors import CptError

_ROLL = "cpt/roll/"
_FAIL = "cpt/fail/"
RELAY_CONNECT_S = 10.0  # how long a failed node tries to reach node 0 to say why


class RendezvousError(CptError):
    """A node did not join the run (timeout, unreachable node 0, duplicate node rank,
    or a node that failed before starting)."""


def _nodes(ranks: list[int]) -> str:
    return ", ".join(str(r) for r in ranks)


def _wait_for_port(addr: str, port: int, timeout_s: float, poll_s: float = 0.5) -> bool:
    """Whether ``addr:port`` accepts a TCP connection within ``timeout_s`` seconds
    (probed with plain sockets: TCPStore's own connect retries log C++ stack traces and
    take up to twice its timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((addr, port), timeout=max(0.1, min(2.0, left))):
                return True
        except OSError:
            if deadline - time.monotonic() <= 0:
                return False
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def _store(addr: str, port: int, is_master: bool, timeout_s: float) -> Any:
    from torch.distributed import TCPStore

    if not is_master and not _wait_for_port(addr, port, timeout_s):
        raise TimeoutError(f"{addr}:{port} did not accept a connection within {timeout_s:g} s")
    return TCPStore(addr, port, None, is_master, datetime.timedelta(seconds=timeout_s),
                    wait_for_workers=False, multi_tenant=is_master)


def roll_call(addr: str, port: int, node_rank: int, nnodes: int, timeout_s: float,
              echo: Callable[[str], None] = print, poll_s: float = 0.25) -> Any:
    """Check this node in and wait until all ``nnodes`` nodes have, at most ``timeout_s``
    seconds (wall clock, from this call).

    Returns:
        The store (node 0: the server, to keep alive until torchrun's rendezvous has
        reused it; other nodes: a client, which may be dropped).

    Raises:
        RendezvousError: node 0 unreachable within the timeout ("could not reach node 0
            at ADDR:PORT within T s"), nodes missing at the timeout ("node(s) 1, 3 of 4
            never joined ..."), a node rank given twice, or a node that reported its
            failure ("node 1 failed before starting: ...").
    """
    deadline = time.monotonic() + timeout_s
    where = f"{addr}:{port}"
    try:
        store = _store(addr, port, node_rank == 0, timeout_s)
    except Exception as exc:  # torch raises DistNetworkError/RuntimeError with a long text
        if node_rank == 0:
            raise RendezvousError(f"node 0 could not listen on {where} (--master-addr/--master-port): "
                                  f"{' '.join(str(exc).split())[:200]}") from None
        raise RendezvousError(
            f"could not reach node 0 at {where} within {timeout_s:g} s (--rendezvous-timeout): is node 0 "
            "started, with the same --master-addr and --master-port, and is the port open?") from None
    lost = RendezvousError(f"lost the connection to node 0 at {where} during the roll call "
                           "(node 0 stopped: see its error)")
    told = False
    try:
        store.add(f"{_ROLL}{node_rank}", 1)
    except Exception:  # node 0 went away under us
        raise lost from None
    while True:
        try:
            counts = [store.add(f"{_ROLL}{r}", 0) for r in range(nnodes)]
            failed = {r: store.get(f"{_FAIL}{r}") for r in range(nnodes) if store.check([f"{_FAIL}{r}"])}
        except Exception:
            raise lost from None
        twice = [r for r, c in enumerate(counts) if c > 1]
        if twice:
            raise RendezvousError(f"node rank(s) {_nodes(twice)} given by more than one node (--node-rank must "
                                  f"be unique in 0..{nnodes - 1})")
        for r, message in failed.items():
            raise RendezvousError(f"node {r} failed before starting: {message.decode('utf-8', 'replace')}")
        missing = [r for r, c in enumerate(counts) if c == 0]
        if not missing:
            return store
        left = deadline - time.monotonic()
        if left <= 0:
            joined = [r for r, c in enumerate(counts) if c]
            raise RendezvousError(
                f"rendezvous timed out after {timeout_s:g} s (--rendezvous-timeout): node(s) {_nodes(missing)} "
                f"of {nnodes} never joined at {where} (joined: {_nodes(joined)}); start them with --nnodes {nnodes} "
                f"--master-addr {addr} --master-port {port}")
        if not told and timeout_s - left >= min(5.0, timeout_s / 2):  # say what it waits for, once
            echo(f"waiting for node(s) {_nodes(missing)} of {nnodes} to join at {where} "
                 f"(up to {timeout_s:g} s, --rendezvous-timeout)")
            told = True
        time.sleep(min(poll_s, max(left, 0.01)))


def report_failure(addr: str, port: int, node_rank: int, message: str,
                   connect_s: float = RELAY_CONNECT_S) -> bool:
    """Best effort: tell node 0 (and through it every node) that this node failed before
    starting, with its one-line ``message``. Tries to reach node 0 for ``connect_s``
    seconds. Returns whether the message was delivered; never raises."""
    try:
        store = _store(addr, port, False, connect_s)
        store.set(f"{_FAIL}{node_rank}", message.encode("utf-8"))
        return True
    except Exception:
        return False
