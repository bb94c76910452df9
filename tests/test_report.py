"""``cpt report``: reading metrics.jsonl, the summary figures, the PNG and the errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cptcore.errors import DataError
from cptcore.report import read_metrics, summarize, write_report


def _write_run(tmp_path: Path, records: list[dict], *, extra_lines: list[str] = ()) -> Path:
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    (run / "logs" / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run


def _synthetic(steps: int = 10) -> list[dict]:
    records = []
    for step in range(1, steps + 1):
        records.append(
            {
                "step": step,
                "time": 1000.0 + 2.0 * step,
                "loss": 3.0 - 0.1 * step,
                "lr": 1e-4 * min(1.0, step / 3),
                "grad_norm": 1.5,
                "tokens_per_second": 250.0 if step > 1 else 100.0,
                "tokens_seen": 512 * step,
                "peak_memory_mb": 2000.0 + step,
            }
        )
        if step in (5, 10):
            records.append({"step": step, "time": 1000.5 + 2.0 * step, "eval_loss": 2.5 - 0.01 * step, "eval_perplexity": math.exp(2.5 - 0.01 * step)})
    return records


def test_summary_figures_from_synthetic_run(tmp_path):
    run = _write_run(tmp_path, _synthetic())
    report = write_report(run, baseline_perplexity=13.0)
    s = report.summary
    assert s.steps == 10
    assert s.tokens_trained == 5120
    assert s.tokens_per_second == 250.0  # median: the slow first step does not count
    assert s.first_loss == pytest.approx(2.9)
    assert s.last_loss == pytest.approx(2.0)
    assert s.eval_first == (5, pytest.approx(math.exp(2.45)))
    assert s.eval_last == (10, pytest.approx(math.exp(2.40)))
    assert s.peak_memory_mb == 2010.0
    assert s.wall_time_s == pytest.approx(1020.5 - 1002.0)
    md = report.summary_md.read_text(encoding="utf-8")
    assert report.summary_md == run / "report" / "summary.md"
    assert "| Tokens trained | 5,120 |" in md
    assert "| Throughput (median) | 250.0 tokens/s |" in md
    assert "2.9000 → 2.0000" in md
    assert "11.588 (step 5) → 11.023 (step 10)" in md
    assert "13.000 → 11.023" in md
    assert "![loss, learning rate and eval perplexity](curves.png)" in md


def test_png_is_written_and_is_a_png(tmp_path):
    run = _write_run(tmp_path, _synthetic())
    report = write_report(run)
    data = report.curves_png.read_bytes()
    assert report.curves_png == run / "report" / "curves.png"
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # three panels with lines, not an empty canvas


def test_summary_json_wall_time_wins_and_missing_eval_says_na(tmp_path):
    records = [r for r in _synthetic(4) if "eval_loss" not in r]
    run = _write_run(tmp_path, records)
    (run / "summary.json").write_text(json.dumps({"wall_time_s": 42.5}), encoding="utf-8")
    report = write_report(run)
    assert report.summary.wall_time_s == 42.5
    assert report.summary.eval_first is None
    assert "n/a (no evaluation logged)" in report.summary_md.read_text(encoding="utf-8")


def test_perplexity_derived_from_eval_loss_when_not_logged(tmp_path):
    records = [{"step": 1, "loss": 2.0}, {"step": 1, "eval_loss": 2.0}]
    s = summarize(read_metrics(_write_run(tmp_path, records) / "logs" / "metrics.jsonl"))
    assert s.eval_last == (1, pytest.approx(math.exp(2.0)))
    assert s.tokens_trained is None and s.tokens_per_second is None and s.wall_time_s is None


def test_blank_lines_and_unknown_string_fields_are_fine(tmp_path):
    run = _write_run(tmp_path, _synthetic(2), extra_lines=["", '{"step": 3, "loss": 1.0, "phase": "train"}'])
    assert [r["step"] for r in read_metrics(run / "logs" / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"step": 3, "loss": 1.0', "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"loss": 1.0}', "missing or non-integer 'step'"),
        ('{"step": "3", "loss": 1.0}', "missing or non-integer 'step'"),
        ('{"step": 3, "loss": "nan?"}', "metric 'loss' is not a number"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, cpt_cli, bad_line, message):
    run = _write_run(tmp_path, _synthetic(2), extra_lines=[bad_line])  # 2 records, no eval: line 3
    metrics = run / "logs" / "metrics.jsonl"
    with pytest.raises(DataError) as err:
        write_report(run)
    assert str(err.value).startswith(f"{metrics}:3: {message}")
    code, output = cpt_cli("report", str(run))
    assert code == 1
    assert output.splitlines()[0].startswith(f"error: {metrics}:3: {message}")
    assert not (run / "report" / "curves.png").exists()


def test_missing_and_empty_metrics(tmp_path, cpt_cli):
    code, output = cpt_cli("report", str(tmp_path / "nope"))
    assert code == 1 and output.startswith(f"error: {tmp_path / 'nope'}: run folder not found")
    (tmp_path / "run").mkdir()
    code, output = cpt_cli("report", str(tmp_path / "run"))
    assert code == 1
    assert output.startswith(f"error: {tmp_path / 'run' / 'logs' / 'metrics.jsonl'}: metrics file not found")
    run = _write_run(tmp_path / "b", [])
    code, output = cpt_cli("report", str(run))
    assert code == 1
    assert "metrics file is empty" in output.splitlines()[0]


def test_cli_writes_report_and_prints_summary(tmp_path, cpt_cli):
    run = _write_run(tmp_path, _synthetic())
    code, output = cpt_cli("report", str(run), "--baseline-perplexity", "13")
    assert code == 0, output
    assert "Tokens trained" in output and "5,120" in output
    assert (run / "report" / "curves.png").is_file()
    code, _ = cpt_cli("report", str(run), "--out", str(tmp_path / "elsewhere"))
    assert code == 0 and (tmp_path / "elsewhere" / "summary.md").is_file()


@pytest.mark.parametrize("value", ["-3", "0", "nan", "inf"])
def test_bad_baseline_perplexity_is_refused_before_any_report(tmp_path, cpt_cli, value):
    run = _write_run(tmp_path, _synthetic())
    code, output = cpt_cli("report", str(run), "--baseline-perplexity", value)
    # a usage error (exit 2): below 1 by click's range, nan/inf by cptcore.cli.numbers.finite
    assert code == 2, output
    assert "Invalid value for '--baseline-perplexity'" in output and "Traceback" not in output
    assert not (run / "report" / "summary.md").exists()
    # the library keeps its own check for callers of write_report
    from cptcore.errors import ConfigError
    from cptcore.report import write_report

    with pytest.raises(ConfigError, match="--baseline-perplexity must be a positive finite number"):
        write_report(run, baseline_perplexity=float(value))
