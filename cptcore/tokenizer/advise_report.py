"""Printing and plotting the ``cpt tokenizer advise`` report (:mod:`.advise`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .advise import fmt_bytes, fmt_count


def advise_table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the per-size table, as strings (shared by the rich table and
    the Markdown in docs/tokenizer.md)."""
    corpora = list(report["corpora"])
    retain = list(report["retain"])
    has_model = report.get("model") is not None
    header = ["size", "+vocab", "new rows"]
    header += [f"{c} tok/char" for c in corpora] + [f"{c} bytes/tok" for c in corpora]
    header += [f"{r} tokens (Δ, docs changed)" for r in retain]
    if has_model:
        header += ["+params", "+weights", "+train state", "FLOPs/byte ×base"]
    header += ["gain/1k tokens"]
    rows = [
        ["base", "0", "0"]
        + [f"{report['corpora'][c]['base_tokens_per_char']:.3f}" for c in corpora]
        + [f"{report['corpora'][c]['base_bytes_per_token']:.2f}" for c in corpora]
        + [f"{report['retain'][r]['base_tokens']:,}" for r in retain]
        + (["0", "0", "0", "1.000"] if has_model else [])
        + [""]
    ]
    good = [r for r in report["sizes"] if not r.get("too_small")]
    gains = dict(zip([r["size"] for r in sorted(good, key=lambda r: r["added"])], report["knee"]["gains"]))
    for r in report["sizes"]:
        if r.get("too_small"):
            rows.append([str(r["size"]), "too small"] + [""] * (len(header) - 2))
            continue
        mark = " ←" if r["size"] == report["knee"]["size"] else ""
        row = [f"{r['size']}{mark}", f"{r['added']:,}", f"{r['new_rows']:,}"]
        row += [f"{r['corpora'][c]['tokens_per_char']:.3f}" for c in corpora]
        row += [f"{r['corpora'][c]['bytes_per_token']:.2f}" for c in corpora]
        for name in retain:
            v = r["retain"][name]
            row.append(f"{v['tokens']:,} ({v['delta']:+,}, {v['changed_docs']}/{v['docs']})")
        if has_model:
            row += [fmt_count(r["added_params"]), fmt_bytes(r["added_weight_bytes"]), fmt_bytes(r["added_train_bytes"]), f"{r['cost_vs_base']:.3f}"]
        row.append(f"{gains[r['size']]:.2%}")
        rows.append(row)
    return header, rows


def print_advise(report: dict[str, Any]) -> None:
    """Print the table, the recommendation and its rule."""
    from rich.console import Console
    from rich.table import Table

    header, rows = advise_table_rows(report)
    table = Table(title=f"cpt tokenizer advise ({report['method']}, base vocabulary {report['vocab_before']})")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)
    k = report["knee"]
    verdict = f"recommended size: {k['size']}" if k["size"] is not None else "recommended: do not expand"
    console.print(f"{verdict} — rule: {k['rule']}." + (f" Note: {k['note']}." if k["note"] else ""))
    if report.get("model"):
        console.print(
            "training cost: 6·(non-embedding params + hidden·vocab)·tokens/byte FLOPs per corpus byte "
            f"(Kaplan et al. 2020); base {report['base_flops_per_byte']:.3g} FLOPs/byte"
        )
    changed = [(r["size"], n, v) for r in report["sizes"] if not r.get("too_small") for n, v in r["retain"].items() if v["changed_docs"]]
    for size, name, v in changed:
        console.print(f"[yellow]size {size} changes the tokenization of {v['changed_docs']} of {v['docs']} '{name}' documents ({v['delta']:+,} tokens)[/yellow]")


def plot_advise(report: dict[str, Any], path: str | Path) -> Path:
    """Write a PNG: tokens/char of each corpus (and all together) against added tokens,
    the recommended size marked. Uses matplotlib's Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = sorted((r for r in report["sizes"] if not r.get("too_small")), key=lambda r: r["added"])
    xs = [0] + [r["added"] for r in good]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, c in report["corpora"].items():
        ys = [c["base_tokens_per_char"]] + [r["corpora"][name]["tokens_per_char"] for r in good]
        ax.plot(xs, ys, marker="o", label=name)
    if len(report["corpora"]) > 1:
        ax.plot(xs, [report["base_tokens_per_char"]] + [r["tokens_per_char"] for r in good], marker="s", ls="--", color="k", label="all corpora")
    for r in good:
        ax.annotate(str(r["size"]), (r["added"], r["tokens_per_char"]), textcoords="offset points", xytext=(3, 5), fontsize=7)
    k = report["knee"]
    if k["size"] is not None:
        r = next(r for r in good if r["size"] == k["size"])
        ax.axvline(r["added"], color="tab:red", ls=":", label=f"recommended: {k['size']}")
    ax.set_xlabel("tokens added to the vocabulary")
    ax.set_ylabel("tokens per character (held-out)")
    ax.set_title(f"compression vs vocabulary size ({report['method']} base)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def markdown_table(report: dict[str, Any]) -> str:
    """The per-size table as GitHub Markdown (used for docs/tokenizer.md)."""
    header, rows = advise_table_rows(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
