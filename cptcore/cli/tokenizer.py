"""``cpt tokenizer train``, ``cpt tokenizer expand`` and ``cpt tokenizer advise`` (see docs/tokenizer.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .numbers import finite
from ..tokenizer.expand import REPORT_NAME, expand_tokenizer
from ..tokenizer.report import print_report
from ..tokenizer.train import TrainOptions, train_sentencepiece
from ..model.outdir import prepare_out_file
from ..tokenizer.advise import advise, parse_named, parse_sizes
from ..tokenizer.advise_report import plot_advise, print_advise


def train_command(
    inputs: list[Path] = typer.Option(..., "--input", help="Training text, as `cpt prepare` reads it: JSONL/JSON/Parquet (the --text-field) or plain text (one document per line), .gz too; one file, repeatable."),
    vocab_size: int = typer.Option(..., "--vocab-size", help="Pieces in the model (meta pieces included)."),
    out: Path = typer.Option(..., "--out", help="Output folder: tokenizer.model and train_report.json."),
    model_type: str = typer.Option("bpe", "--model-type", help="bpe (mergeable into LLaMA/Mistral), unigram, char or word."),
    character_coverage: float = typer.Option(0.9995, "--character-coverage", callback=finite, help="Share of characters given their own piece (SentencePiece takes 0.98-1)."),
    byte_fallback: bool = typer.Option(False, "--byte-fallback/--no-byte-fallback", help="Encode unknown characters as <0x..> bytes."),
    max_sentence_length: int = typer.Option(16384, "--max-sentence-length", metavar="<int>", min=1, help="Longest line used, in bytes (longer ones are counted and skipped)."),
    input_sentence_size: int = typer.Option(
        2_000_000, "--input-sentence-size", metavar="<int>", min=0, help="Lines sampled from the corpus for training (0 = all)."
    ),
    shuffle: bool = typer.Option(True, "--shuffle/--no-shuffle", help="Reservoir-sample lines (else take the first ones)."),
    split_digits: bool = typer.Option(True, "--split-digits/--no-split-digits", help="Every digit is its own piece."),
    text_field: str = typer.Option("text", "--text-field", help="JSONL/JSON/Parquet field holding the text."),
    seed: int = typer.Option(0, "--seed", metavar="<int>", min=0, help="Seed of SentencePiece's sampler (at most 2**32 - 1)."),
    threads: int = typer.Option(2, "--threads", metavar="<int>", min=1, help="Trainer threads."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out."),
) -> None:
    """Train a SentencePiece model on domain text (streamed; large corpora are sampled)."""
    from rich.console import Console

    opts = TrainOptions(
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=byte_fallback,
        max_sentence_length=max_sentence_length,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=shuffle,
        split_digits=split_digits,
        seed=seed,
        num_threads=threads,
        text_field=text_field,
    )
    model, stats = train_sentencepiece(inputs, out, opts, overwrite=overwrite)
    Console().print(
        f"trained {model} ({vocab_size} pieces, {model_type}) on {stats.sentences} lines"
        f" ({stats.skipped_too_long} skipped as too long) in {stats.seconds:.1f} s"
    )


def expand_command(
    base: Path = typer.Option(..., "--base", help="Base tokenizer: a Hugging Face folder or a SentencePiece .model file."),
    add: Path = typer.Option(..., "--add", help='Pieces to add: a SentencePiece .model, a JSONL of {"piece": ...}, or one token per line.'),
    out: Path = typer.Option(..., "--out", help="Output folder (a complete Hugging Face tokenizer folder)."),
    method: str = typer.Option("auto", "--method", help="auto, sentencepiece (ModelProto merge) or bpe (byte-level vocab + merges)."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Cap the final vocabulary at this size."),
    eval_text: Optional[Path] = typer.Option(None, "--eval-text", help="Held-out text (.jsonl or plain) for tokens/char before and after."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out."),
) -> None:
    """Add pieces to a tokenizer, keeping every original id; write the folder and a report."""
    report = expand_tokenizer(
        base, add, out, method=method, target_vocab=vocab_size, eval_text=eval_text, overwrite=overwrite
    )
    print_report(report)
    typer.echo(f"wrote {out} (report: {out / REPORT_NAME})")


def advise_command(
    base: Path = typer.Option(..., "--base", help="Base tokenizer: a Hugging Face folder (SentencePiece or byte-level BPE) or a SentencePiece .model file."),
    corpus: list[str] = typer.Option(..., "--corpus", help="Domain text NAME=FILE (read like --eval-text); trains the domain model and is measured; repeatable."),
    retain: list[str] = typer.Option([], "--retain", help="Text whose tokenization must not change, NAME=FILE; repeatable."),
    sizes: str = typer.Option("1000,2000,4000,8000,16000", "--sizes", help="Domain SentencePiece vocabulary sizes to try, comma-separated."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder (config.json): added parameters, memory and training cost per byte."),
    knee_gain: float = typer.Option(0.01, "--knee-gain", callback=finite, help="Recommend the last size before one more 1,000 rows cuts tokens/char by less than this (relative, 0-1)."),
    heldout_every: int = typer.Option(10, "--heldout-every", metavar="<int>", min=0, help="Measure every K-th document (K >= 2), train on the rest (0 = measure the training text)."),
    input_sentence_size: int = typer.Option(2_000_000, "--input-sentence-size", metavar="<int>", min=0, help="Lines SentencePiece samples for training (0 = all)."),
    character_coverage: float = typer.Option(0.9995, "--character-coverage", callback=finite, help="Share of characters given their own piece (SentencePiece takes 0.98-1)."),
    threads: int = typer.Option(2, "--threads", metavar="<int>", min=1, help="SentencePiece trainer threads."),
    seed: int = typer.Option(0, "--seed", metavar="<int>", min=0, help="Seed of SentencePiece's sampler (at most 2**32 - 1)."),
    max_sentence_length: int = typer.Option(16384, "--max-sentence-length", metavar="<int>", min=1, help="Longest training line, in bytes (longer ones are counted and skipped)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON to this file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of compression against size (default: beside --json, .png)."),
) -> None:
    """Measure compression, retained-text changes, memory and cost per candidate vocabulary size; recommend one."""
    import json

    corpora, retained, size_list = parse_named(corpus, "--corpus"), parse_named(retain, "--retain"), parse_sizes(sizes)
    if plot is None and json_out is not None:
        plot = json_out.with_suffix(".png")
    for path, flag in ((json_out, "--json"), (plot, "--plot")):
        if path is not None:
            prepare_out_file(path, flag)  # before minutes of work, not after

    opts = TrainOptions(
        input_sentence_size=input_sentence_size, character_coverage=character_coverage, num_threads=threads, seed=seed,
        max_sentence_length=max_sentence_length,
    )
    report = advise(
        base,
        corpora,
        retained,
        size_list,
        model=model,
        knee_gain=knee_gain,
        heldout_every=heldout_every,
        train_options=opts,
    )
    print_advise(report)
    if report["train_lines_skipped_too_long"]:
        typer.echo(f"note: {report['train_lines_skipped_too_long']} training lines longer than --max-sentence-length were skipped"
                   f" ({report['train_lines']} used)")
    if plot is not None:
        typer.echo(f"wrote {plot_advise(report, plot)}")
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        typer.echo(f"wrote {json_out}")
    typer.echo(f"{report['seconds']:.1f} s (SentencePiece training {report['train_seconds']:.1f} s)")


def make_tokenizer_app() -> typer.Typer:
    app = typer.Typer(help="Train SentencePiece models, expand tokenizer vocabularies, advise on the size.", no_args_is_help=True)
    app.command("train")(train_command)
    app.command("expand")(expand_command)
    app.command("advise")(advise_command)
    return app
