"""The benchmark scripts of issue 7 start and parse their options (the runs themselves
are minutes long and are not part of the test suite; see benchmarks/README.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script, option", [("train_overhead.py", "--rounds"), ("memory.py", "--shapes"), ("clean.py", "--ray-size"), ("scale.py", "--memory-limit-mb"), ("vocab_init.py", "--steps"),
                                            ("eval_cost.py", "--eval-tokens")])
def test_help(script, option):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert option in proc.stdout


def test_machine_facts_name_cores_ram_and_versions(tmp_path, monkeypatch):
    sys.path.insert(0, str(BENCH))
    try:
        import _machine
    finally:
        sys.path.remove(str(BENCH))
    monkeypatch.setattr(_machine, "RESULTS", tmp_path)
    out = _machine.write_result("demo", {"ratio": 1.0, "diverged": {"losses": [2.5, float("nan")], "peak": float("inf")}})
    import json

    doc = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert doc["benchmark"] == "demo" and doc["ratio"] == 1.0
    assert doc["diverged"] == {"losses": [2.5, None], "peak": None}
    m = doc["machine"]
    assert m["cpu_cores"] >= 1 and m["cpu_model"]
    assert m["versions"]["cptcore"] and m["versions"]["torch"]
