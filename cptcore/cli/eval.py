"""``cpt eval``: models x raw-text sets in bits per byte (each model with its own
tokenizer), and multiple-choice accuracy. See docs/eval.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from ..errors import ConfigError
from ..eval.sets import parse_named
from ..model.outdir import prepare_out_file
from ..config import ModelConfig
from ..data.tokenize import choose_pad_id, load_tokenizer
from ..eval.mc import evaluate_mc, read_items
from ..eval.text import encode_documents, full_text_prefix, read_texts, score_documents, windows, with_prefix
from ..model.load import check_model_path, load_model, resolve_hf_folder


def _named(values: List[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or []:
        name, path = parse_named(v, flag)
        if name in out:
            raise ConfigError(f"{flag}: two sets named '{name}': name them NAME=FILE")
        out[name] = path
    return out


def run_eval(models: List[str], texts: dict[str, str], mcs: dict[str, str], mc_dev: dict[str, str], k_shot: int,
             max_length: int, stride: int | None, batch_tokens: int | None, dtype: str, text_field: str = "text",
             log: Any = None, full_text: bool = False) -> dict:
    """Evaluate every model on every set; returns the JSON-able result (schema in docs/eval.md).

    Raises:
        ConfigError: no model or no set, a dev file for an unknown --mc set, bad numbers;
        DataError: bad input file (``FILE:LINE``).
    """
    log = log or (lambda msg: print(f"cpt eval: {msg}", file=sys.stderr, flush=True))
    if not models:
        raise ConfigError("give at least one --model")
    if not texts and not mcs:
        raise ConfigError("give at least one --text NAME=FILE.jsonl or --mc NAME=FILE.jsonl")
    for name in mc_dev:
        if name not in mcs:
            raise ConfigError(f"--mc-dev {name}: no --mc set named '{name}' (--mc sets: {', '.join(mcs) or 'none'})")
    if k_shot < 0:
        raise ConfigError(f"--k-shot must be >= 0, got {k_shot}")
    batch_tokens = max_length if batch_tokens is None else batch_tokens
    if batch_tokens < max_length:
        raise ConfigError(f"--batch-tokens ({batch_tokens}) must be at least --max-length ({max_length})")
    stride = max_length // 2 if stride is None else stride
    windows(0, max_length, stride)  # validates both, before any model loads
    for m in models:
        check_model_path(m)
    docs = {name: read_texts(path, text_field) for name, path in texts.items()}
    items = {name: read_items(path) for name, path in mcs.items()}
    dev = {name: read_items(path) for name, path in mc_dev.items()}
    out: dict = {"max_length": max_length, "stride": stride, "k_shot": k_shot, "full_text": full_text, "models": {}}
    for m in models:
        folder = str(resolve_hf_folder(m))
        model = load_model(ModelConfig(path=m, dtype=dtype), log=lambda msg: None)
        model.eval()

        tok = load_tokenizer(folder)
        res: dict = {"path": m, "vocab_size": len(tok), "text": {}, "mc": {}}
        for name, texts_ in docs.items():
            ids, nbytes = encode_documents(folder, texts_)
            if full_text:
                ids, nbytes = with_prefix(ids, nbytes, full_text_prefix(tok))
            r = score_documents(model, ids, nbytes, max_length=max_length, stride=stride,
                                batch_tokens=batch_tokens, pad_id=choose_pad_id(tok))
            res["text"][name] = {**r.to_dict(), "documents": len(texts_),
                                 "windowed_documents": sum(len(x) > max_length for x in ids)}
            log(f"{m} on {name}: bpb {r.bpb:.4f}, loss {r.loss:.4f}, perplexity {r.perplexity:.2f} ({r.tokens:,} tokens)")
        for name, its in items.items():
            r = evaluate_mc(model, tok, its, dev.get(name, ()), k_shot if name in dev else 0)
            res["mc"][name] = r.to_dict()
            log(f"{m} on {name}: accuracy letter {r.accuracy['letter']:.3f}, loglik {r.accuracy['loglik']:.3f}")
        out["models"][m] = res
        del model
    return out


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    models = list(result["models"])
    text_sets = list(next(iter(result["models"].values()))["text"])
    if text_sets:
        table = Table(title=f"bits per byte (loss nats/token, perplexity) · max_length {result['max_length']}, stride {result['stride']}")
        table.add_column("model", overflow="fold")
        for s in text_sets:
            table.add_column(s, justify="right")
        for m in models:
            cells = [f"{r['bpb']:.4f}  ({r['loss']:.3f}, {r['perplexity']:.2f})" for r in (result["models"][m]["text"][s] for s in text_sets)]
            table.add_row(m, *cells)
        console.print(table)
    mc_sets = list(next(iter(result["models"].values()))["mc"])
    if mc_sets:
        table = Table(title="multiple choice accuracy: letter (first-token logits) / loglik (choice log-likelihood)")
        table.add_column("model", overflow="fold")
        for s in mc_sets:
            table.add_column(s, justify="right")
        for m in models:
            cells = []
            for s in mc_sets:
                r = result["models"][m]["mc"][s]
                cells.append(f"{r['accuracy']['letter']:.3f} / {r['accuracy']['loglik']:.3f}  (n={r['items']}, {r['k_shot']}-shot)")
            table.add_row(m, *cells)
        console.print(table)


def eval_command(
    model: List[str] = typer.Option(..., "--model", help="Hugging Face folder or .gguf file (repeatable); each uses its own tokenizer."),
    text: Optional[List[str]] = typer.Option(None, "--text", help="Raw text set NAME=FILE.jsonl (field 'text'; repeatable)."),
    mc: Optional[List[str]] = typer.Option(None, "--mc", help="Multiple-choice set NAME=FILE.jsonl (repeatable)."),
    mc_dev: Optional[List[str]] = typer.Option(None, "--mc-dev", help="k-shot examples for an --mc set: NAME=DEV.jsonl."),
    k_shot: int = typer.Option(5, "--k-shot", help="Examples per prompt for --mc sets that have --mc-dev."),
    max_length: int = typer.Option(2048, "--max-length", help="Tokens per window (longer documents use sliding windows)."),
    stride: Optional[int] = typer.Option(None, "--stride", help="Window step in tokens (default max_length/2); each token is scored once."),
    batch_tokens: Optional[int] = typer.Option(None, "--batch-tokens", help="Token slots per forward (short documents are batched; default --max-length). Memory: about 2 x slots x vocabulary x 4 bytes of logits."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 | bf16 | fp16."),
    text_field: str = typer.Option("text", "--text-field", help="JSON field holding the text."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
    full_text: bool = typer.Option(False, "--full-text", help="Score every token, the first after EOS: bytes = the documents' UTF-8 length for every tokenizer."),
) -> None:
    """Bits per byte of models x raw-text sets (comparable across tokenizers) and
    multiple-choice accuracy; prints tables, optionally writes JSON."""
    if json_out is not None:
        prepare_out_file(json_out, "--json")  # before the evaluation, not after
    result = run_eval(model, _named(text, "--text"), _named(mc, "--mc"), _named(mc_dev, "--mc-dev"), k_shot,
                      max_length, stride, batch_tokens, dtype, text_field, full_text=full_text)
    print_tables(result)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        typer.echo(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
