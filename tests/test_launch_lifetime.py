"""A launched rank dies with its launcher (``PR_SET_PDEATHSIG`` on Linux, the watchdog
thread elsewhere), and records its one-line error for the launcher.

Fast: plain Python processes stand in for the launcher and the rank (the real
``cpt train --nproc-per-node 2`` case is in tests/test_launch_slow.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The "launcher": starts a "rank" that ties itself to it, prints the rank's pid, sleeps.
LAUNCHER = r'''
import os, subprocess, sys, time
env = dict(os.environ, TORCHELASTIC_RUN_ID="test", CPT_LAUNCHER_PID=str(os.getpid()))
rank = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env, start_new_session=True)
print(rank.pid, flush=True)
time.sleep(120)
'''
RANK = r'''
import sys, time
from cptcore.train.lifetime import tie_to_launcher
how = tie_to_launcher(force_watchdog={force})
open({marker!r}, "w").write(how)
time.sleep(120)
'''


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("force_watchdog", [False, True], ids=["pdeathsig", "watchdog"])
def test_rank_dies_when_its_launcher_is_killed(tmp_path, force_watchdog):
    if not force_watchdog and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    marker = tmp_path / "how"
    code = RANK.format(force=force_watchdog, marker=str(marker))
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, code], env=_env(), stdout=subprocess.PIPE, text=True)
    rank = int(launcher.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.read_text() == ("watchdog" if force_watchdog else "pdeathsig")
        assert _alive(rank)
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 10
        while _alive(rank) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(rank), "the rank outlived its launcher by 10 s"
    finally:
        if _alive(rank):
            os.kill(rank, signal.SIGKILL)
        launcher.kill()


def test_rank_whose_launcher_is_already_gone_exits_at_once():
    """The launcher died before the rank called prctl: the rank's parent is not
    $CPT_LAUNCHER_PID any more, so it must not go on."""
    env = dict(_env(), TORCHELASTIC_RUN_ID="test", CPT_LAUNCHER_PID=str(os.getpid() + 10_000_000))
    run = subprocess.run([sys.executable, "-c", "from cptcore.train.lifetime import tie_to_launcher as t; t(); "
                          "print('survived')"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == -signal.SIGKILL
    assert "survived" not in run.stdout


def test_not_tied_outside_torchrun(monkeypatch):
    from cptcore.train.lifetime import tie_to_launcher

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert tie_to_launcher() is None


def test_error_file_is_read_by_torchrun(tmp_path, monkeypatch):
    """The file a rank writes is the format torchrun's ProcessFailure reads."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from cptcore.train.lifetime import write_error_file

    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
    write_error_file("data folder /x: no manifest.json", printed=False)
    failure = ProcessFailure(local_rank=1, pid=123, exitcode=1, error_file=str(path))
    assert failure.message == "data folder /x: no manifest.json"
    assert failure.error_file_data["cpt_printed"] is False
    assert failure.timestamp > 0


@pytest.mark.parametrize("local_rank, rank, prints", [("0", "3", True), ("1", "1", False), (None, None, True)])
def test_first_rank_of_every_node_prints_the_error(tmp_path, monkeypatch, capsys, local_rank, rank, prints):
    from cptcore.cli.app import print_error
    from cptcore.errors import CptError

    for key, value in (("LOCAL_RANK", local_rank), ("RANK", rank)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
    print_error(CptError("bad thing\nin two lines"))
    err = capsys.readouterr().err
    assert (err.splitlines()[:1] == ["error: bad thing in two lines"]) is prints
    assert (err == "") is not prints
    assert json.loads(path.read_text())["message"] == "bad thing in two lines"
    assert json.loads(path.read_text())["cpt_printed"] is prints
