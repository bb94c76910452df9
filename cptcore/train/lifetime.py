"""A launched rank's ties to its launcher: it dies with it, and tells it why it failed.

torchrun starts every rank in a session of its own (``start_new_session=True``), so a
signal to the launcher's process group never reaches the ranks, and a launcher killed
with SIGKILL cannot stop them: they would go on training into ``OUT``. Each rank
therefore asks the kernel to SIGKILL it when its parent (the launcher that runs the
elastic agent) exits - ``prctl(PR_SET_PDEATHSIG)`` on Linux, a watchdog thread that
polls ``os.getppid()`` elsewhere. SIGTERM/SIGINT sent to the launcher are forwarded to
the ranks by torchrun's agent itself (:func:`cptcore.train.launch.run_torchrun`).

Torch-free: imported by the CLI's error printer.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LAUNCHER_PID_ENV = "CPT_LAUNCHER_PID"


def _prctl_pdeathsig(sig: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, sig)``; False where unavailable (not Linux, no libc)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def watch_parent(parent: int, period_s: float = 1.0) -> threading.Thread:
    """Start a daemon thread that SIGKILLs this process once its parent is no longer
    ``parent`` (the parent exited and the process was re-parented). The fallback where
    ``PR_SET_PDEATHSIG`` does not exist; ``period_s`` is the polling interval in seconds."""

    def loop() -> None:
        while os.getppid() == parent:
            time.sleep(period_s)
        _die()

    thread = threading.Thread(target=loop, name="cpt-parent-watchdog", daemon=True)
    thread.start()
    return thread


def tie_to_launcher(force_watchdog: bool = False) -> str | None:
    """In a rank started by torchrun (``TORCHELASTIC_RUN_ID`` set), make this process die
    (SIGKILL) when its parent - the launcher running the elastic agent - dies.

    The parent is ``$CPT_LAUNCHER_PID`` when ``cpt train --nproc-per-node`` started the
    run, else the current parent (plain ``torchrun``). If the parent is already gone
    (the launcher died before this call), the process exits at once.

    Returns:
        ``"pdeathsig"``, ``"watchdog"`` (``force_watchdog`` or no ``prctl``), or ``None``
        when this process was not started by torchrun.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    expected = os.environ.get(LAUNCHER_PID_ENV)
    parent = int(expected) if expected and expected.isdigit() else os.getppid()
    how = "watchdog"
    if not force_watchdog and _prctl_pdeathsig(signal.SIGKILL):
        how = "pdeathsig"
    # the launcher may have died before prctl took effect: then we were re-parented already
    if os.getppid() != parent or parent == 1:
        _die()
    if how == "watchdog":
        watch_parent(parent)
    return how


def write_error_file(message: str, printed: bool) -> None:
    """Record this rank's one-line error in torchrun's per-rank error file
    (``$TORCHELASTIC_ERROR_FILE``, the JSON format torchrun's ``ProcessFailure`` reads),
    so the launcher can report it. ``printed``: whether this rank printed it itself.
    No-op outside torchrun; never raises."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"message": message, "timestamp": int(time.time()), "cpt_printed": printed}, fh)
    except OSError:
        pass
