"""``cpt report RUN_DIR``: curves (PNG) and a Markdown summary of a training run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..report import write_report


def report_command(
    run_dir: Path = typer.Argument(..., help="A training run folder (the --out of cpt train), holding logs/metrics.jsonl."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write curves.png and summary.md (default: RUN_DIR/report)."),
    baseline_perplexity: Optional[float] = typer.Option(
        None, "--baseline-perplexity", help="Held-out perplexity measured before training, shown as 'before'."
    ),
) -> None:
    """Write a run's curves (PNG) and a Markdown summary under RUN_DIR/report.

    Plots training/eval loss, learning rate and eval perplexity against the step, and
    summarises tokens trained, tokens/s, loss and perplexity first → last, wall time.
    """
    from rich.console import Console

    report = write_report(run_dir, baseline_perplexity=baseline_perplexity, out_dir=out)
    console = Console()
    console.print(report.summary_md.read_text(encoding="utf-8").split("\n![")[0], markup=False, highlight=False)
    console.print(f"wrote {report.curves_png}")
    console.print(f"wrote {report.summary_md}")


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
