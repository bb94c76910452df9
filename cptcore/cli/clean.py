"""``cpt clean``: deduplicate, filter and decontaminate raw text before ``cpt prepare``."""

from __future__ import annotations

from typing import Any, List, Optional

import typer

from .numbers import finite
from ..errors import ConfigError
from ..clean.pipeline import CleanArgs, clean
from ..clean.report import heavy_filters, heavy_warning
from ..config import parse_set
from .prepare import _command


def _filter_options(items: list[str] | None, known: set[str]) -> dict[str, dict]:
    """``--set FILTER.KEY=VALUE`` items grouped by filter (values read as YAML).

    Raises:
        ConfigError: an item without ``FILTER.``.
    """
    out: dict[str, dict] = {}
    for item in items or []:
        head, dot, rest = item.partition("=")[0].strip().partition(".")
        if "=" not in item or not head or not dot or not rest:
            raise ConfigError(f"--set {item}: expected FILTER.KEY=VALUE, e.g. near.threshold=0.7 (filters: {', '.join(sorted(known))})")
        key, value = parse_set(item)
        out.setdefault(head, {})[rest] = value
    return out


def add_clean_command(app: typer.Typer, pm: Any) -> None:
    @app.command("clean")
    def clean_cmd(
        input: List[str] = typer.Option(..., "--input", help="PATH file, folder or glob (repeatable): JSONL/JSON/Parquet/text, .gz too."),
        out: str = typer.Option(..., "--out", help="Output folder: shards/ (cleaned JSONL.gz), removed/, stats.json, card.md, state/."),
        filter_: Optional[List[str]] = typer.Option(None, "--filter", help="Filter to run, in order (repeatable; cpt filters). Default: quality, repetition, exact, near."),
        language: Optional[List[str]] = typer.Option(None, "--language", help="Keep these languages (ISO 639-1, repeatable, e.g. zh); adds the language filter."),
        decontaminate: Optional[List[str]] = typer.Option(None, "--decontaminate", help="NAME=FILE evaluation set (repeatable); adds the decontaminate filter."),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="FILTER.KEY=VALUE filter option (repeatable), e.g. near.threshold=0.7."),
        text_field: str = typer.Option("text", "--text-field", help="JSON/Parquet field holding the text."),
        seed: int = typer.Option(0, "--seed", help="Seed of the MinHash permutations (same seed, same output)."),
        shard_docs: int = typer.Option(10_000, "--shard-docs", help="Documents per shard at most (unit of work, output file and restart)."),
        shard_mb: float = typer.Option(16.0, "--shard-mb", callback=finite, help="Input MB per shard at most (bounds memory; > 0)."),
        in_flight_mb: float = typer.Option(256.0, "--in-flight-mb", callback=finite, help="Input MB the driver holds read ahead at most: no new shard is read while this much is in flight (bounds memory at any --num-proc; > 0)."),
        num_proc: int = typer.Option(1, "--num-proc", help="Worker processes (local) or tasks in flight (ray)."),
        executor: str = typer.Option("local", "--executor", help="Where the filters run (cpt executors): local | ray | plugins (same output)."),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --executor ray: a running cluster (ray start --head); default: a local one."),
        on_error: str = typer.Option("stop", "--on-error", help="Unreadable records: stop (file:line) | skip (count by reason)."),
        examples: int = typer.Option(3, "--examples", help="Removed documents shown per filter in card.md."),
        write_removed: bool = typer.Option(True, "--write-removed/--no-write-removed", help="Write removed documents with their reason to removed/."),
        compress: bool = typer.Option(True, "--compress/--no-compress", help="Write .jsonl.gz (else .jsonl)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier cpt clean output in --out (default: resume it when the options match)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    ) -> None:
        """Remove exact and near duplicates, other languages, low-quality and contaminated documents; write cleaned shards, stats.json and card.md."""

        known = {e.spec.name for e in pm.registry("filters")}
        args = CleanArgs(
            inputs=tuple(input), out=out, filters=tuple(filter_ or ()), filter_options=_filter_options(set_, known),
            languages=tuple(language or ()), decontaminate=tuple(decontaminate or ()), text_field=text_field, seed=seed,
            shard_docs=shard_docs, shard_bytes=int(shard_mb * (1 << 20)), in_flight_bytes=int(in_flight_mb * (1 << 20)),
            num_proc=num_proc, executor=executor,
            ray_address=ray_address, on_error=on_error, examples=examples, write_removed=write_removed, compress=compress,
            overwrite=overwrite, command=_command(), progress=progress,
        )
        stats = clean(pm, args)
        print_clean_summary(stats, out)


def print_clean_summary(stats: dict, out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cpt clean -> {out}")
    for col in ("input", "in", "kept", "removed"):
        table.add_column(col, justify="left" if col in ("input", "removed") else "right", overflow="fold")
    for inp in stats["inputs"]:
        d = inp["documents"]
        table.add_row(inp["input"], f"{d['in']:,}", f"{d['kept']:,}", ", ".join(f"{k}: {v:,}" for k, v in d["removed"].items()) or "0")
    d = stats["documents"]
    resumed = f" · {stats['shards_resumed']} shards resumed" if stats["shards_resumed"] else ""
    table.caption = f"{d['in']:,} in = {d['kept']:,} kept + {sum(d['removed'].values()):,} removed · {stats['seconds']:.1f} s{resumed} · see {out}/card.md"
    console = Console()
    console.print(table)
    for heavy in heavy_filters(stats):
        console.print(f"warning: {heavy_warning(*heavy)}", style="yellow", markup=False, highlight=False, soft_wrap=True)
