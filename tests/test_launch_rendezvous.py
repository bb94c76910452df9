"""The multi-node roll call (cptcore.train.rendezvous) with "nodes" as threads on
localhost, and the launcher flags. Fast; the real two-launcher runs are in
tests/test_launch_slow.py."""

from __future__ import annotations

import threading

import pytest

from cptcore.errors import ConfigError


def _port() -> int:
    from cptcore.train.launch import _free_port

    return _free_port()


def _node(results: dict, port: int, rank: int, nnodes: int, timeout: float) -> threading.Thread:
    from cptcore.train.rendezvous import roll_call

    def go() -> None:
        try:
            results[rank] = roll_call("127.0.0.1", port, rank, nnodes, timeout, echo=lambda _: None)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[rank] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def test_all_nodes_join():
    port, results = _port(), {}
    threads = [_node(results, port, r, 3, 30) for r in (0, 2, 1)]
    for t in threads:
        t.join(60)
    assert all(not isinstance(results[r], Exception) for r in range(3)), results


def test_missing_node_is_named_at_the_timeout():
    from cptcore.train.rendezvous import RendezvousError, roll_call

    port, results = _port(), {}
    said = []
    _node(results, port, 2, 3, 30)
    with pytest.raises(RendezvousError) as info:
        roll_call("127.0.0.1", port, 0, 3, 6, echo=said.append)
    assert str(info.value).startswith(
        "rendezvous timed out after 6 s (--rendezvous-timeout): node(s) 1 of 3 never joined at 127.0.0.1:")
    assert "(joined: 0, 2)" in str(info.value)
    assert said and said[0].startswith("waiting for node(s) 1 of 3 to join")


def test_unreachable_node_zero():
    from cptcore.train.rendezvous import RendezvousError, roll_call

    with pytest.raises(RendezvousError, match=r"could not reach node 0 at 127\.0\.0\.1:\d+ within 1 s"):
        roll_call("127.0.0.1", _port(), 1, 2, 1, echo=lambda _: None)


def test_failure_before_start_is_relayed_to_the_other_nodes():
    from cptcore.train.rendezvous import RendezvousError, report_failure

    port, results = _port(), {}
    node0 = _node(results, port, 0, 3, 60)
    node2 = _node(results, port, 2, 3, 60)
    assert report_failure("127.0.0.1", port, 1, "optimizer.lr must be positive, got -1.0", connect_s=30)
    node0.join(60)
    node2.join(60)
    for r in (0, 2):
        assert isinstance(results[r], RendezvousError)
        assert str(results[r]) == "node 1 failed before starting: optimizer.lr must be positive, got -1.0"
    assert not report_failure("127.0.0.1", _port(), 1, "x", connect_s=0.5)  # nobody listening: False, no raise


def test_duplicate_node_rank():
    from cptcore.train.rendezvous import RendezvousError

    port, results, twin = _port(), {}, {}
    threads = [_node(results, port, 0, 3, 10)]
    threads[0].join(0.5)  # node 0 listens first
    threads += [_node(results, port, 1, 3, 10), _node(twin, port, 1, 3, 10)]
    for t in threads:
        t.join(60)
    assert isinstance(results[0], RendezvousError)
    assert str(results[0]).startswith("node rank(s) 1 given by more than one node")


def test_torchrun_argv_carries_the_rendezvous_timeout():
    from cptcore.train.launch import torchrun_argv

    cmd = torchrun_argv(["train", "--rendezvous-timeout", "30", "--nnodes=2", "--max-steps", "3"], 1, nnodes=2,
                        node_rank=1, master_addr="10.0.0.1", rendezvous_timeout=30)
    assert "--rdzv-conf=timeout=30" in cmd
    assert cmd[cmd.index("cptcore.cli.main") + 1:] == ["train", "--max-steps", "3"]
    with pytest.raises(ConfigError, match="--rendezvous-timeout must be > 0 seconds, got 0"):
        torchrun_argv(["train"], 1, rendezvous_timeout=0)


def test_node_flags_without_a_launch_are_refused(capsys):
    from cptcore.cli.app import run

    code = run(["train", "--model", "m", "--data", "d", "--out", "o", "--master-addr", "10.0.0.1"])
    assert code == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        "error: --node-rank, --master-addr and --master-port need --nproc-per-node or --nnodes > 1")
