"""``cpt report RUN_DIR``: curves (PNG) and a Markdown summary of a training run."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .numbers import finite
from ..report import write_comparison, write_report


def report_command(
    run_dirs: List[Path] = typer.Argument(..., help="Training run folder(s) (the --out of cpt train), holding logs/metrics.jsonl."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the report (default: RUN_DIR/report; several runs: the comparison goes to FIRST_RUN/report)."),
    baseline_perplexity: Optional[float] = typer.Option(
        None, "--baseline-perplexity", callback=finite, metavar="<float>", min=1.0, help="Held-out perplexity measured before training, shown as 'before' (>= 1: exp of a loss)."
    ),
) -> None:
    """Write a run's curves (PNG) and a Markdown summary under RUN_DIR/report; with
    several runs, also a side-by-side comparison.

    Plots training/eval loss, learning rate and eval perplexity against the step, and
    summarises tokens trained, tokens/s, loss and perplexity first → last, wall time.
    With named eval sets: bpb per set against tokens seen (baseline dashed), domain gain
    against retained change (budget shaded) and the per-set ledger table.
    """
    from rich.console import Console

    console = Console()
    single = len(run_dirs) == 1
    for run_dir in run_dirs:
        report = write_report(run_dir, baseline_perplexity=baseline_perplexity, out_dir=out if single else None)
        if single:
            console.print(_text(report.summary_md), markup=False, highlight=False)
        for path in (report.curves_png, report.eval_png, report.tradeoff_png, report.summary_md):
            if path is not None:
                console.print(f"wrote {path}")
    if not single:
        md = write_comparison(run_dirs, out or Path(run_dirs[0]) / "report")
        console.print(_text(md), markup=False, highlight=False)
        console.print(f"wrote {md}")


def _text(md: Path) -> str:
    """The Markdown without its image lines (for the terminal)."""
    return "\n".join(line for line in md.read_text(encoding="utf-8").splitlines() if not line.startswith("!["))


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
