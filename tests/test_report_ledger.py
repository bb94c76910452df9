"""The forgetting ledger in `cpt report`: per-set table, the keep_best step on a
constructed run, the figures, and runs side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cptcore.eval.ledger import build_ledger, ledger_markdown

# law (domain) improves; web (retained, budget 0.05) drifts up and crosses its budget at
# step 300. Best domain gain within budget: step 200 (law 1.40, web +0.04).
LAW = {0: 2.00, 100: 1.60, 200: 1.40, 300: 1.30}
WEB = {0: 1.00, 100: 1.02, 200: 1.04, 300: 1.08}


def _records(law=LAW, web=WEB):
    recs = []
    for step in sorted(law):
        r = {"step": step, "tokens_seen": step * 4096, "eval/law/bpb": law[step], "eval/web/bpb": web[step],
             "eval/law/loss": law[step] * 2, "eval/web/loss": web[step] * 2}
        if step:
            r["loss"] = 3.0 - step / 1000
        recs.append(r)
    return recs


def _run(tmp_path: Path, name: str, records, budget: dict | None = None) -> Path:
    run = tmp_path / name
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if budget is not None:
        import yaml

        (run / "config.yaml").write_text(yaml.safe_dump({"eval": {"budget": budget, "on_budget": "keep_best"}}))
    return run


def test_ledger_table_and_keep_best_step_on_a_constructed_run():
    lg = build_ledger(_records(), {"web": 0.05}, "keep_best", run="r")
    law, web = lg.sets
    assert (law.name, law.retained, law.baseline, law.final, law.best, law.best_step) == ("law", False, 2.0, 1.3, 1.3, 300)
    assert (web.retained, web.baseline, web.final, web.best, web.best_step) == (True, 1.0, 1.08, 1.0, 0)
    assert web.change == pytest.approx(0.08) and web.within_budget is False and law.within_budget is None
    assert [p[1] for p in law.points] == [0, 409600, 819200, 1228800]  # tokens seen
    assert lg.best_step == 200
    md = ledger_markdown([lg])
    assert "| web | retained | 1.0000 | 1.0800 | 1.0000 (0) | +0.0800 | 0.0500 | **no** |" in md
    assert "| law | domain | 2.0000 | 1.3000 | 1.3000 (300) | -0.7000 | - | - |" in md
    assert "best step with every retained set within budget: 200" in md
    # a looser budget keeps the last step; none within budget -> no best step
    assert build_ledger(_records(), {"web": 0.1}).best_step == 300
    assert build_ledger(_records(web={0: 1.0, 100: 1.2, 200: 1.3, 300: 1.4}), {"web": 0.05}).best_step == 0


def test_no_step_zero_baseline_is_said(tmp_path):
    recs = [r for r in _records() if r["step"] != 0]
    lg = build_ledger(recs, {"web": 0.05})
    assert lg.sets[0].baseline == 1.6 and lg.sets[0].baseline_step == 100
    assert any("no step-0 evaluation" in n for n in lg.notes)
    assert build_ledger([{"step": 1, "loss": 2.0, "eval_loss": 2.0}]) is None  # unnamed eval only: no ledger


def test_report_writes_ledger_figures_and_table(tmp_path, cpt_cli):
    run = _run(tmp_path, "law_lr2e-4", _records(), {"web": 0.05})
    code, out = cpt_cli("report", str(run))
    assert code == 0, out
    rep = run / "report"
    for png in ("curves.png", "eval_sets.png", "tradeoff.png"):
        assert (rep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (rep / "summary.md").read_text()
    assert "Forgetting ledger" in md and "![bpb per eval set](eval_sets.png)" in md and "| web | retained |" in md
    assert "Forgetting ledger" in out and "**no**" in out


def test_report_compares_runs_side_by_side(tmp_path, cpt_cli):
    a = _run(tmp_path, "lr2e-4", _records(), {"web": 0.05})
    b = _run(tmp_path, "lr5e-5", _records(law={0: 2.0, 100: 1.8, 200: 1.7, 300: 1.65},
                                          web={0: 1.0, 100: 1.005, 200: 1.01, 300: 1.02}), {"web": 0.05})
    code, out = cpt_cli("report", str(a), str(b), "--out", str(tmp_path / "cmp"))
    assert code == 0, out
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| `lr2e-4` | web | retained |" in md and "| `lr5e-5` | web | retained | 1.0000 | 1.0200 |" in md
    assert "`lr5e-5`: best step with every retained set within budget: 300" in md
    for png in ("compare_eval_sets.png", "compare_tradeoff.png"):
        assert (tmp_path / "cmp" / png).read_bytes()[:4] == b"\x89PNG"
    assert (a / "report" / "summary.md").is_file() and (b / "report" / "summary.md").is_file()
