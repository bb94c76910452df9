"""Run reports: curves (PNG) and a Markdown summary from a run's ``logs/metrics.jsonl``.

A training run writes one JSON object per line to ``RUN_DIR/logs/metrics.jsonl``
(``step``, ``time`` and flat keys ``loss``, ``lr``, ``grad_norm``,
``tokens_per_second``, ``tokens_seen``, ``peak_memory_mb``; evaluation steps add
``eval_loss`` and ``eval_perplexity``). :func:`write_report` reads it and writes

* ``RUN_DIR/report/curves.png``: training loss (with eval loss), learning rate and eval
  perplexity against the optimizer step (matplotlib, Agg backend, no display needed);
* ``RUN_DIR/report/summary.md``: tokens trained, tokens/s, first/last training loss,
  eval perplexity first → last, peak memory and wall time.

With named eval sets (``eval/NAME/bpb`` keys), it also writes the forgetting ledger
(:mod:`cptcore.eval.ledger`): ``eval_sets.png`` (bpb per set against tokens seen,
baseline dashed), ``tradeoff.png`` (domain gain against retained change, budget shaded)
and a per-set table in ``summary.md``. :func:`write_comparison` puts several runs side
by side.

Perplexity is ``exp(eval_loss)`` (mean token-level cross-entropy in nats); when a record
has ``eval_loss`` but no ``eval_perplexity`` it is computed that way.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError, DataError
from .eval.ledger import build_ledger, ledger_markdown, read_budget
from .eval.ledger_plots import plot_sets, plot_tradeoff

METRICS_RELPATH = Path("logs") / "metrics.jsonl"
REPORT_DIRNAME = "report"
#: metric keys whose values must be numbers when present (other keys are passed over)
KNOWN_METRICS = (
    "time", "loss", "lr", "grad_norm", "tokens_per_second", "tokens_seen",
    "peak_memory_mb", "eval_loss", "eval_perplexity",
)


@dataclass(frozen=True)
class RunSummary:
    """Figures of one run, computed from its metrics records.

    Attributes:
        steps: last optimizer step logged.
        tokens_trained: ``tokens_seen`` of the last record that has it (tokens, all ranks).
        tokens_per_second: median of the logged ``tokens_per_second`` (tokens/s); the
            median keeps the first, warm-up step from skewing it. ``None`` if never logged.
        first_loss, last_loss: training loss at the first and last logged step (nats).
        eval_first, eval_last: ``(step, perplexity)`` of the first and last evaluation,
            or ``None`` without evaluations.
        baseline_perplexity: held-out perplexity measured before training by the caller
            (e.g. the quickstart), or ``None``.
        peak_memory_mb: largest ``peak_memory_mb`` logged (MiB), or ``None``.
        wall_time_s: seconds between the first and last record's ``time`` (plus the first
            step's duration when ``summary.json`` gives the total), or ``None``.
    """

    steps: int
    tokens_trained: int | None
    tokens_per_second: float | None
    first_loss: float | None
    last_loss: float | None
    eval_first: tuple[int, float] | None
    eval_last: tuple[int, float] | None
    baseline_perplexity: float | None
    peak_memory_mb: float | None
    wall_time_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote."""

    curves_png: Path
    summary_md: Path
    summary: RunSummary
    eval_png: Path | None = None  # per-set bpb curves (named eval sets only)
    tradeoff_png: Path | None = None  # domain gain vs retained change
    ledger: Any = None  # cptcore.eval.ledger.Ledger or None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file: one JSON object per non-blank line.

    Returns:
        The records in file order, each a dict with an integer ``step``.

    Raises:
        DataError: the file is missing or has no records (``path: ...``), or a line is
            not JSON, not an object, lacks an integer ``step`` or has a non-numeric
            value for one of :data:`KNOWN_METRICS` (``path:line: ...``).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError("metrics file not found (is this a training run folder?)", path=str(p))
    records: list[dict[str, Any]] = []
    with open(p, encoding="utf-8", errors="strict") as fh:
        try:
            lines = list(fh)
        except UnicodeDecodeError as exc:
            raise DataError(f"not valid UTF-8: {exc.reason}", path=str(p)) from exc
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=str(p), line=lineno) from exc
        if not isinstance(record, dict):
            raise DataError(f"expected a JSON object, got {type(record).__name__}", path=str(p), line=lineno)
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise DataError(f"missing or non-integer 'step' (got {step!r})", path=str(p), line=lineno)
        for key in KNOWN_METRICS:
            value = record.get(key)
            if value is not None and not _number(value):
                raise DataError(f"metric '{key}' is not a number: {value!r}", path=str(p), line=lineno)
        records.append(record)
    if not records:
        raise DataError("metrics file is empty: the run logged no step", path=str(p))
    return records


def _series(records: Sequence[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(r["step"], float(r[key])) for r in records if _number(r.get(key))]


def eval_perplexities(records: Sequence[dict[str, Any]]) -> list[tuple[int, float]]:
    """``(step, perplexity)`` of every evaluation record, perplexity = exp(eval_loss)
    where ``eval_perplexity`` was not logged."""
    out = []
    for r in records:
        if _number(r.get("eval_perplexity")):
            out.append((r["step"], float(r["eval_perplexity"])))
        elif _number(r.get("eval_loss")):
            out.append((r["step"], math.exp(float(r["eval_loss"]))))
    return out


def summarize(
    records: Sequence[dict[str, Any]],
    *,
    run_summary: dict[str, Any] | None = None,
    baseline_perplexity: float | None = None,
) -> RunSummary:
    """Compute a :class:`RunSummary` from metrics records (see :func:`read_metrics`).

    Args:
        run_summary: the run's ``summary.json`` if any; its ``wall_time_s`` (seconds),
            when present, is used as the wall time.
        baseline_perplexity: a perplexity measured before training, shown as "before".
    """
    losses = _series(records, "loss")
    speeds = [v for _, v in _series(records, "tokens_per_second")]
    seen = _series(records, "tokens_seen")
    mem = [v for _, v in _series(records, "peak_memory_mb")]
    times = [v for _, v in _series(records, "time")]
    evals = eval_perplexities(records)
    wall = None
    if run_summary and _number(run_summary.get("wall_time_s")):
        wall = float(run_summary["wall_time_s"])
    elif len(times) >= 2:
        wall = max(times) - min(times)
    return RunSummary(
        steps=max(r["step"] for r in records),
        tokens_trained=int(seen[-1][1]) if seen else None,
        tokens_per_second=statistics.median(speeds) if speeds else None,
        first_loss=losses[0][1] if losses else None,
        last_loss=losses[-1][1] if losses else None,
        eval_first=evals[0] if evals else None,
        eval_last=evals[-1] if evals else None,
        baseline_perplexity=baseline_perplexity,
        peak_memory_mb=max(mem) if mem else None,
        wall_time_s=wall,
    )


def plot_curves(
    records: Sequence[dict[str, Any]], out_png: str | Path, title: str = "", baseline_perplexity: float | None = None
) -> Path:
    """Draw loss (train and eval), learning rate and eval perplexity against the step
    into ``out_png`` (PNG, 150 dpi). Panels without data say so instead of staying blank.
    ``baseline_perplexity`` (measured before training) is drawn at step 0.

    Returns:
        ``out_png`` as a Path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    loss, eval_loss = _series(records, "loss"), _series(records, "eval_loss")
    lr, ppl = _series(records, "lr"), eval_perplexities(records)
    if baseline_perplexity is not None:
        ppl = [(0, float(baseline_perplexity))] + ppl

    def draw(ax: Any, series: list[tuple[int, float]], label: str, **kw: Any) -> None:
        if series:
            xs, ys = zip(*series)
            ax.plot(xs, ys, label=label, **kw)

    ax = axes[0]
    draw(ax, loss, "train loss", color="tab:blue", linewidth=1.2)
    draw(ax, eval_loss, "eval loss", color="tab:orange", marker="o", linewidth=1.5)
    ax.set_title("Loss")
    ax.set_ylabel("cross-entropy (nats/token)")
    if loss or eval_loss:
        ax.legend()
    ax = axes[1]
    draw(ax, lr, "learning rate", color="tab:green")
    ax.set_title("Learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax = axes[2]
    draw(ax, ppl, "eval perplexity", color="tab:red", marker="o")
    ax.set_title("Eval perplexity")
    ax.set_ylabel("exp(eval loss)")
    for ax, series in zip(axes, (loss or eval_loss, lr, ppl)):
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not series:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


def _fmt(value: float | None, spec: str = ".4f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes, sec = divmod(seconds, 60)
    return f"{seconds:.1f} s" if minutes < 1 else f"{int(minutes)} min {sec:.0f} s ({seconds:.0f} s)"


def summary_markdown(summary: RunSummary, run_dir: str | Path, png_name: str = "curves.png") -> str:
    """The Markdown text of ``summary.md``."""
    s = summary
    if s.eval_first is not None:
        first_step, first_ppl = s.eval_first
        last_step, last_ppl = s.eval_last  # type: ignore[misc]
        evals = f"{first_ppl:.3f} (step {first_step}) → {last_ppl:.3f} (step {last_step})"
    else:
        evals = "n/a (no evaluation logged)"
    rows = [
        ("Optimizer steps", str(s.steps)),
        ("Tokens trained", "n/a" if s.tokens_trained is None else f"{s.tokens_trained:,}"),
        ("Throughput (median)", _fmt(s.tokens_per_second, ",.1f", " tokens/s")),
        ("Training loss first → last", f"{_fmt(s.first_loss)} → {_fmt(s.last_loss)}"),
        ("Eval perplexity first → last", evals),
    ]
    if s.baseline_perplexity is not None:
        after = s.eval_last[1] if s.eval_last is not None else None
        rows.append(("Held-out perplexity before → after training", f"{s.baseline_perplexity:.3f} → {_fmt(after, '.3f')}"))
    rows += [
        ("Peak memory", _fmt(s.peak_memory_mb, ",.0f", " MiB")),
        ("Wall time", _fmt_duration(s.wall_time_s)),
    ]
    lines = [f"# Run report: `{run_dir}`", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", f"![loss, learning rate and eval perplexity]({png_name})", ""]
    return "\n".join(lines)


def write_report(run_dir: str | Path, *, baseline_perplexity: float | None = None, out_dir: str | Path | None = None) -> Report:
    """Read ``RUN_DIR/logs/metrics.jsonl`` (and ``RUN_DIR/summary.json`` if present) and
    write ``curves.png`` and ``summary.md`` into ``out_dir`` (default ``RUN_DIR/report``).

    Raises:
        DataError: the run folder or its metrics file is missing, empty or malformed
            (naming file and line); ``summary.json`` is not valid JSON.
        ConfigError: ``baseline_perplexity`` is not a positive finite number.
    """
    if baseline_perplexity is not None and not (math.isfinite(baseline_perplexity) and baseline_perplexity > 0):
        raise ConfigError(f"--baseline-perplexity must be a positive finite number, got {baseline_perplexity}")
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError("run folder not found", path=str(run))
    records = read_metrics(run / METRICS_RELPATH)
    run_summary = None
    summary_json = run / "summary.json"
    if summary_json.is_file():
        try:
            run_summary = json.loads(summary_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", path=str(summary_json), line=exc.lineno) from exc
        if not isinstance(run_summary, dict):
            run_summary = None
    summary = summarize(records, run_summary=run_summary, baseline_perplexity=baseline_perplexity)
    out = Path(out_dir) if out_dir is not None else run / REPORT_DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    png = plot_curves(
        records, out / "curves.png", title=f"cptcore run: {run}", baseline_perplexity=baseline_perplexity
    )
    ledger, eval_png, trade_png = run_ledger(run), None, None
    text = summary_markdown(summary, run)
    if ledger is not None:
        eval_png = plot_sets([ledger], out / "eval_sets.png")
        trade_png = plot_tradeoff([ledger], out / "tradeoff.png")
        text += "\n" + ledger_markdown([ledger]) + "\n![bpb per eval set](eval_sets.png)\n"
        if trade_png is not None:
            text += "\n![domain gain against retained change](tradeoff.png)\n"
    md = out / "summary.md"
    md.write_text(text, encoding="utf-8")
    return Report(curves_png=png, summary_md=md, summary=summary, eval_png=eval_png, tradeoff_png=trade_png, ledger=ledger)


def run_ledger(run_dir: str | Path) -> Any:
    """The forgetting ledger of a run folder (:func:`cptcore.eval.ledger.build_ledger`
    with the budgets of its ``config.yaml``), or None without named eval sets.

    Raises:
        DataError: missing or malformed metrics file.
    """
    run = Path(run_dir)
    budget, on_budget = read_budget(run)
    return build_ledger(read_metrics(run / METRICS_RELPATH), budget, on_budget, run=run.name or str(run))


def write_comparison(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Several runs side by side in ``out_dir``: ``compare.md`` (the runs' figures in one
    table and one per-set ledger table), ``compare_eval_sets.png`` and
    ``compare_tradeoff.png`` (when the runs have named eval sets). Returns the Markdown path.

    Raises:
        DataError: a run folder or its metrics file is missing or malformed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [Path(r) for r in run_dirs]
    for r in runs:
        if not r.is_dir():
            raise DataError("run folder not found", path=str(r))
    sums = [summarize(read_metrics(r / METRICS_RELPATH)) for r in runs]
    head = "| | " + " | ".join(f"`{r.name}`" for r in runs) + " |"
    lines = ["# Runs compared", "", head, "|---|" + "---|" * len(runs)]
    for label, get in (("Optimizer steps", lambda s: str(s.steps)),
                       ("Tokens trained", lambda s: "n/a" if s.tokens_trained is None else f"{s.tokens_trained:,}"),
                       ("Training loss first → last", lambda s: f"{_fmt(s.first_loss)} → {_fmt(s.last_loss)}"),
                       ("Throughput (median)", lambda s: _fmt(s.tokens_per_second, ",.1f", " tokens/s"))):
        lines.append(f"| {label} | " + " | ".join(get(s) for s in sums) + " |")
    lines.append("")
    ledgers = [lg for lg in (run_ledger(r) for r in runs) if lg is not None]
    if ledgers:
        lines += [ledger_markdown(ledgers), "![bpb per eval set](compare_eval_sets.png)", ""]
        plot_sets(ledgers, out / "compare_eval_sets.png")
        if plot_tradeoff(ledgers, out / "compare_tradeoff.png") is not None:
            lines += ["![domain gain against retained change](compare_tradeoff.png)", ""]
    md = out / "compare.md"
    md.write_text("\n".join(lines), encoding="utf-8")
    return md
