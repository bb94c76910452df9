"""``cpt model resize`` and ``cpt model import-gguf`` (see docs/tokenizer.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from .numbers import finite
from ..errors import CptError
from ..model.gguf import import_gguf
from ..model.resize import DEFAULT_INIT, resize_model_folder
from ..model.resize_check import CheckOptions, UnsafeResizeError, print_check


def _key_values(values: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise CptError(f"{flag} expects KEY=VALUE, got {value!r}")
        out[key] = val
    return out


def resize_command(
    model: Path = typer.Option(..., "--model", help="Hugging Face model folder (with its own tokenizer)."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Expanded tokenizer folder (extends the model's tokenizer)."),
    out: Path = typer.Option(..., "--out", help="Output folder: safetensors, config, the new tokenizer and resize_report.json."),
    init: str = typer.Option(DEFAULT_INIT, "--init", help="Init method for new rows (`cpt embedding-inits` lists them): mean, noisy_mean, multivariate, normal, zero."),
    init_option: list[str] = typer.Option([], "--init-option", help="Option of the init method, KEY=VALUE (e.g. scale=0.5); repeatable."),
    seed: int = typer.Option(0, "--seed", help="Seed of random init methods."),
    retain: Optional[Path] = typer.Option(None, "--retain", help="Retained text for the check (default: the bundled English sample)."),
    domain: Optional[Path] = typer.Option(None, "--domain", help="Domain text for bits per byte before/after (default: not measured)."),
    check_tokens: int = typer.Option(512, "--check-tokens", help="Retained-text positions measured by the check."),
    max_kl: float = typer.Option(0.1, "--max-kl", callback=finite, help="Refuse when KL(base||resized) on retained text exceeds this (nats/token)."),
    allow_unsafe: bool = typer.Option(False, "--allow-unsafe", help="Save the model even when the check finds it unsafe."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out."),
    _pm: Any = None,
) -> None:
    """Resize input and output embeddings to a new tokenizer (old rows bit-identical), check the result, save."""
    from rich.console import Console
    from rich.table import Table

    t0 = time.perf_counter()
    check = CheckOptions(retain=retain, domain=domain, max_tokens=check_tokens, max_kl=max_kl, allow_unsafe=allow_unsafe)
    try:
        summary = resize_model_folder(
            model, tokenizer, out, init=init, overwrite=overwrite, seed=seed,
            init_options=_key_values(init_option, "--init-option"), check=check, pm=_pm,
        )
    except UnsafeResizeError as exc:  # show the numbers before the one-line error
        print_check(exc.report)
        raise
    table = Table(title="cpt model resize")
    table.add_column("")
    table.add_column("value", justify="right")
    for key in ("old_rows", "new_rows", "init", "tied", "dtype", "seconds"):
        table.add_row(key, str(summary[key]))
    table.add_row("total seconds (load + resize + check + save)", f"{time.perf_counter() - t0:.1f}")
    Console().print(table)
    print_check(summary["check"])
    typer.echo(f"wrote {out} (check: {out / 'resize_report.json'})")


def import_gguf_command(
    file: Path = typer.Argument(..., help="GGUF checkpoint."),
    out: Path = typer.Option(..., "--out", help="Output Hugging Face folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out."),
) -> None:
    """Convert a GGUF checkpoint into a Hugging Face folder (fp32 safetensors, fixed tokenizer)."""
    t0 = time.perf_counter()
    import_gguf(file, out, overwrite=overwrite)
    typer.echo(f"wrote {out} in {time.perf_counter() - t0:.1f} s")


def make_model_app(pm: Any = None) -> typer.Typer:
    """The ``cpt model`` group; ``pm`` is the CLI's plugin manager, so init methods from
    ``--plugin FILE`` and entry points are found by ``resize``."""
    import inspect

    app = typer.Typer(help="Model surgery: embedding resize, GGUF import.", no_args_is_help=True)

    def resize(**kwargs: Any) -> None:
        resize_command(**kwargs, _pm=pm)

    sig = inspect.signature(resize_command)
    resize.__signature__ = sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "_pm"])  # type: ignore[attr-defined]
    resize.__annotations__ = {k: v for k, v in resize_command.__annotations__.items() if k != "_pm"}
    resize.__doc__ = resize_command.__doc__
    app.command("resize")(resize)
    app.command("import-gguf")(import_gguf_command)
    return app
