"""Figures of the forgetting ledger (matplotlib, Agg backend): bpb per eval set against
tokens seen, and the trade-off of domain gain against retained change."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .ledger import Ledger


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int) -> list[Any]:
    plt = _plt()
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cycle[i % len(cycle)] for i in range(n)]


def plot_sets(ledgers: Sequence[Ledger], out_png: str | Path) -> Path:
    """One panel per eval set: bpb against tokens seen, one line per run, its baseline
    dashed, a retained set's budget limit (baseline + budget) dotted.

    Returns:
        ``out_png``.
    """
    plt = _plt()
    names: list[str] = []
    for lg in ledgers:
        names += [s.name for s in lg.sets if s.name not in names]
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    colors = _colors(len(ledgers))
    for ax, name in zip(axes.flat, names):
        role = ""
        for lg, color in zip(ledgers, colors):
            s = next((x for x in lg.sets if x.name == name), None)
            if s is None:
                continue
            role = "retained" if s.retained else "domain"
            xs = [p[1] for p in s.points]
            ax.plot(xs, [p[2] for p in s.points], marker="o", color=color, label=lg.run if len(ledgers) > 1 else "bpb")
            ax.axhline(s.baseline, color=color, linestyle="--", linewidth=1,
                       label=f"baseline (step {s.baseline_step})" if len(ledgers) == 1 else None)
            if s.budget is not None:
                ax.axhline(s.baseline + s.budget, color=color, linestyle=":", linewidth=1.2,
                           label=f"budget +{s.budget:g}" if len(ledgers) == 1 else None)
        ax.set_title(f"{name} ({role})")
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("bits per byte")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle("Eval sets: bits per byte against tokens seen (lower is better)")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def plot_tradeoff(ledgers: Sequence[Ledger], out_png: str | Path) -> Path | None:
    """Domain bpb gain (mean over domain sets, baseline - bpb) on x against each retained
    set's bpb change (bpb - baseline) on y, one point per evaluation, a line per run and
    retained set; the allowed region (change <= budget) shaded; the ``keep_best`` step
    starred. None (nothing drawn) when no run has both a domain and a retained set."""
    plt = _plt()
    usable = [lg for lg in ledgers if lg.domain() and lg.retained()]
    if not usable:
        return None
    fig, ax = plt.subplots(figsize=(7.2, 5.2))
    colors = _colors(len(usable))
    styles = ["-", "--", "-.", ":"]
    budgets = sorted({s.budget for lg in usable for s in lg.retained() if s.budget is not None})
    for lg, color in zip(usable, colors):
        dom = lg.domain()
        dval = [{p[0]: p[2] for p in s.points} for s in dom]
        for j, s in enumerate(lg.retained()):
            pts = [(p[0], p[2]) for p in s.points if all(p[0] in d for d in dval)]
            xs = [sum(sd.baseline - d[st] for sd, d in zip(dom, dval)) / len(dom) for st, _ in pts]
            ys = [v - s.baseline for _, v in pts]
            label = f"{lg.run}: {s.name}" if len(usable) > 1 else s.name
            ax.plot(xs, ys, marker="o", color=color, linestyle=styles[j % len(styles)], label=label)
            if pts:
                ax.annotate(f"step {pts[-1][0]}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(5, 5), fontsize=8)
            if lg.best_step is not None and lg.best_step in [st for st, _ in pts]:
                k = [st for st, _ in pts].index(lg.best_step)
                ax.plot([xs[k]], [ys[k]], marker="*", markersize=16, color=color, markeredgecolor="black",
                        linestyle="none", label=f"best within budget (step {lg.best_step})" if j == 0 else None)
    ymin, ymax = ax.get_ylim()
    top = max([ymax] + [b * 1.3 for b in budgets])
    for b in budgets:
        ax.axhspan(min(ymin, 0), b, color="tab:green", alpha=0.08)
        ax.axhline(b, color="tab:green", linestyle=":", linewidth=1.2)
        ax.text(ax.get_xlim()[0], b, f" budget {b:g}", va="bottom", fontsize=8, color="tab:green")
    ax.set_ylim(min(ymin, 0), top)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.axvline(0, color="gray", linewidth=0.8)
    ax.set_xlabel("domain gain: baseline bpb - bpb (bits/byte, right is learning)")
    ax.set_ylabel("retained change: bpb - baseline bpb (bits/byte, up is forgetting)")
    ax.set_title("Learned vs lost" + ("" if budgets else " (no budget set)") + "; shaded: within budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out
