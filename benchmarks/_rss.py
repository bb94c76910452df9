"""Peak memory of one ``cpt`` command, run in a child process (shared by
benchmarks/clean.py, benchmarks/scale.py and tests/test_clean_slow.py).

The child runs the CLI in-process while a thread samples ``RssAnon`` of
``/proc/self/status`` every 5 ms (anonymous resident memory: what the process allocated,
without the file pages of memory-mapped Arrow files or of SQLite indexes, which the
kernel drops under pressure); it also reports ``ru_maxrss`` (all resident pages, file
pages included). Worker processes (``--num-proc`` > 1, Ray) are not in these figures;
a cgroup's peak (``cgroup_mb``) covers them.

Limits, optional:

* ``data_limit``: ``RLIMIT_DATA`` in bytes (private writable memory; ``RLIMIT_AS`` would
  count the address space torch and Ray reserve and never touch);
* ``cgroup_mb``: a memory cgroup (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``)
  the child and its workers run in; its peak usage (page cache included: the kernel
  reclaims that at the limit, only anonymous memory over it is fatal) is reported.
  Needs write access to ``/sys/fs/cgroup``; :func:`cgroup_root` says whether there is one.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RUNNER = """
import re, resource, runpy, sys, threading, time
peak = [0]
def sample():
    while True:
        m = re.search(r"RssAnon:\\s+(\\d+)", open("/proc/self/status").read())
        peak[0] = max(peak[0], int(m.group(1)))
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
sys.argv = ["cpt"] + sys.argv[1:]
try:
    runpy.run_module("cptcore.cli.main", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("PEAK", peak[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def cgroup_root() -> tuple[Path, int] | None:
    """``(folder new cgroups go in, cgroup version)`` when this process may create a
    memory cgroup, else None."""
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").is_file() and "memory" in (v2 / "cgroup.controllers").read_text() and os.access(v2, os.W_OK):
        return v2, 2
    v1 = Path("/sys/fs/cgroup/memory")
    if (v1 / "memory.limit_in_bytes").is_file() and os.access(v1, os.W_OK):
        return v1, 1
    return None


class _Cgroup:
    def __init__(self, limit_mb: int):
        root = cgroup_root()
        if root is None:
            raise SystemExit("no writable memory cgroup under /sys/fs/cgroup (run without --memory-limit-mb)")
        self.version = root[1]
        self.path = root[0] / f"cpt-bench-{os.getpid()}-{time.monotonic_ns()}"
        self.path.mkdir()
        limit = str(limit_mb << 20)
        (self.path / ("memory.max" if self.version == 2 else "memory.limit_in_bytes")).write_text(limit)
        if self.version == 2 and (self.path / "memory.swap.max").exists():
            (self.path / "memory.swap.max").write_text("0")

    def join(self) -> None:  # in the child, before exec
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_mb(self) -> float | None:
        f = self.path / ("memory.peak" if self.version == 2 else "memory.max_usage_in_bytes")
        return round(int(f.read_text()) / 2**20, 1) if f.exists() else None

    def oom_kills(self) -> int:
        if self.version == 2:
            events = dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
            return int(events.get("oom_kill", 0))
        return int((self.path / "memory.failcnt").read_text())  # v1: times the limit was hit (reclaim, not only kills)

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:  # processes still leaving
                time.sleep(0.1)


def run_cpt(args: list[str], *, data_limit: int | None = None, cgroup_mb: int | None = None, nice: int = 0,
            timeout: float | None = None, env: dict | None = None) -> dict:
    """Run ``cpt ARGS`` in a child; returns ``seconds``, ``peak_anon_mb`` and
    ``maxrss_mb`` of the child (plus ``cgroup_peak_mb``, ``cgroup_limit_mb`` and
    ``cgroup_limit_hits`` with ``cgroup_mb``).

    Raises:
        SystemExit: the command failed (its stderr's end), or no cgroup is available.
    """
    group = _Cgroup(cgroup_mb) if cgroup_mb else None

    def setup():
        if nice:
            os.nice(nice)
        if data_limit:
            resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))
        if group:
            group.join()

    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, timeout=timeout,
                              preexec_fn=setup, env=env)
        out = {"seconds": round(time.perf_counter() - t0, 2)}
        if group:
            out.update(cgroup_limit_mb=cgroup_mb, cgroup_peak_mb=group.peak_mb(), cgroup_limit_hits=group.oom_kills())
    finally:
        if group:
            group.remove()
    if proc.returncode != 0:
        raise SystemExit(f"cpt {' '.join(args[:1])} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    anon, maxrss = proc.stdout.rsplit("PEAK", 1)[1].split()
    out.update(peak_anon_mb=round(int(anon) / 1024, 1), maxrss_mb=round(int(maxrss) / 1024, 1))
    return out
