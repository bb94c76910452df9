"""``cpt model resize`` and ``cpt model import-gguf`` (see docs/tokenizer.md)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ..model.gguf import import_gguf
from ..model.resize import resize_model_folder


def resize_command(
    model: Path = typer.Option(..., "--model", help="Hugging Face model folder (with its own tokenizer)."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Expanded tokenizer folder (extends the model's tokenizer)."),
    out: Path = typer.Option(..., "--out", help="Output folder: safetensors, config and the new tokenizer."),
    init: str = typer.Option("mean", "--init", help="mean (of sub-token rows) or normal (N(0, initializer_range^2))."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out."),
) -> None:
    """Resize input and output embeddings to a new tokenizer; old rows stay bit-identical."""
    from rich.console import Console
    from rich.table import Table

    t0 = time.perf_counter()
    summary = resize_model_folder(model, tokenizer, out, init=init, overwrite=overwrite)
    table = Table(title="cpt model resize")
    table.add_column("")
    table.add_column("value", justify="right")
    for key in ("old_rows", "new_rows", "init", "tied", "dtype", "seconds"):
        table.add_row(key, str(summary[key]))
    table.add_row("total seconds (load + resize + save)", f"{time.perf_counter() - t0:.1f}")
    Console().print(table)
    typer.echo(f"wrote {out}")


def import_gguf_command(
    file: Path = typer.Argument(..., help="GGUF checkpoint."),
    out: Path = typer.Option(..., "--out", help="Output Hugging Face folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out."),
) -> None:
    """Convert a GGUF checkpoint into a Hugging Face folder (fp32 safetensors, fixed tokenizer)."""
    t0 = time.perf_counter()
    import_gguf(file, out, overwrite=overwrite)
    typer.echo(f"wrote {out} in {time.perf_counter() - t0:.1f} s")


def make_model_app() -> typer.Typer:
    app = typer.Typer(help="Model surgery: embedding resize, GGUF import.", no_args_is_help=True)
    app.command("resize")(resize_command)
    app.command("import-gguf")(import_gguf_command)
    return app
