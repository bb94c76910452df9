"""``prepare(pm, args)``: inputs -> tokenized documents -> packer -> Arrow shards +
manifest. Used by ``cpt prepare pretrain|sft`` and usable from Python."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import options_to_dict, parse_options
from ..errors import ConfigError, DataError
from ..registries import call_provider
from . import readers
from .manifest import FORMAT_VERSION, tokenizer_vocab_hash, write_manifest
from .mixing import Mixer
from .packing import Doc, Dropped, PassThrough, fit_long, masked_reason, trainable
from .sft import POLICY_SKIPS, check_template_tokens
from .stats import InputStats, Progress, RowStats, reason_key
from .executors import check_executor, make_executor
from .workers import ChunkStream, pretrain_chunk, sft_chunk
from .. import __version__
from .tokenize import load_tokenizer, special_tokens
from .writer import ShardWriter

LONG_DOC = ("split", "truncate", "skip")


@dataclass(frozen=True)
class PrepareArgs:
    """Everything ``cpt prepare`` takes (see docs/data.md for each option)."""

    kind: str  # "pretrain" | "sft"
    tokenizer: str
    inputs: tuple[str, ...]
    out: str
    max_length: int = 2048
    packer: str | None = "auto"  # "auto": splice for pretrain, none for SFT; None: no packing
    packer_options: dict = field(default_factory=dict)
    template: str = "chatml"
    template_options: dict = field(default_factory=dict)
    text_field: str = "text"
    num_proc: int = 1
    num_shards: int = 1
    on_error: str = "stop"  # "stop" | "skip"
    long_doc: str = "split"
    add_bos: bool | None = None
    add_eos: bool | None = None
    mix: str = "downsample"
    seed: int = 0
    shuffle_window: int = 0  # rows shuffled together (0: keep order)
    overwrite: bool = False
    command: str = ""
    progress: bool = False
    chunk_bytes: int = 1 << 20  # input bytes tokenized per chunk (bounds memory; ~0.3-1 M tokens)
    chunk_records: int = 1000  # records per chunk at most
    executor: str = "local"  # where chunks are tokenized: "local" | "ray" (cptcore.data.executors)
    ray_address: str | None = None  # with executor="ray": a running cluster (None: start a local one)


def _validate(args: PrepareArgs) -> None:
    if args.kind not in ("pretrain", "sft"):
        raise ConfigError(f"unknown kind {args.kind!r}")
    if args.max_length < 2:
        raise ConfigError("--max-length must be at least 2")
    if args.on_error not in ("stop", "skip"):
        raise ConfigError(f"--on-error must be stop or skip, got {args.on_error!r}")
    if args.long_doc not in LONG_DOC:
        raise ConfigError(f"--long-doc must be one of {', '.join(LONG_DOC)}, got {args.long_doc!r}")
    if args.mix not in ("downsample", "upsample"):
        raise ConfigError(f"--mix must be downsample or upsample, got {args.mix!r}")
    for flag, value in (("--num-shards", args.num_shards), ("--num-proc", args.num_proc)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if args.seed < 0:  # numpy's default_rng takes none (a traceback after --out was replaced)
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    if args.shuffle_window < 0:
        raise ConfigError(f"--shuffle-window must be >= 0 (0: keep input order), got {args.shuffle_window}")
    if not args.inputs:
        raise ConfigError("give at least one --input")


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Create ``out``; with ``overwrite``, first delete a previous ``cpt prepare`` output
    there (never a folder that does not look like one).

    Raises:
        ConfigError: ``out`` is not empty (without ``overwrite``), or is not empty and
            not a prepared folder (with it).
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"--out {out} exists and is not empty (use --overwrite)")
        if not ((out / "manifest.json").is_file() or (out / "state.json").is_file()):
            raise ConfigError(f"--out {out}: refusing to delete a non-empty folder not made by 'cpt prepare'")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _to_item_pretrain(rec: readers.Record) -> tuple:
    if rec.error:
        return ("error", rec.error)
    if rec.text is not None:
        return ("text", rec.text)
    return ("pair", (rec.source, rec.target))


def _to_item_sft(rec: readers.Record) -> tuple:
    return ("error", rec.error) if rec.error else ("obj", rec.data)


def _make_packer(pm: Any, args: PrepareArgs, pad_id: int) -> tuple[Any, Any, Any]:
    """``(spec or None, options or None, packer)`` for ``args.packer`` ("auto": splice
    for pretraining, none for SFT).

    Raises:
        ConfigError: unknown packer (did-you-mean), bad packer option.
    """
    name = args.packer
    if name == "auto":
        name = "splice" if args.kind == "pretrain" else None
    if not name:
        if args.packer_options:
            raise ConfigError("packer options given without --packer")
        return None, None, PassThrough(args.max_length, pad_id)
    spec = pm.registry("packers").get(name)
    options = parse_options(spec.options, args.packer_options, owner=f"packer '{spec.name}'", section="packer")
    return spec, options, spec.make(args.max_length, pad_id, options)


def _make_job(pm: Any, args: PrepareArgs, tok: Any) -> tuple[Any, tuple, Any, Any, Any, Any]:
    """The chunk function and its arguments for this kind of preparation, the record ->
    item converter, the reader's field, and the chat template spec and options (SFT).

    Raises:
        ConfigError: unknown template, bad template option, template the tokenizer
            cannot express (missing special tokens), no tokenize provider.
    """
    tok_path = str(args.tokenizer)
    if args.kind == "pretrain":
        tokenize_fn = call_provider(pm, "cpt_tokenize_fn", tokenizer_path=tok_path, add_bos=args.add_bos, add_eos=args.add_eos)
        return pretrain_chunk, (tokenize_fn, tok_path, args.add_bos, args.add_eos), _to_item_pretrain, args.text_field, None, None
    tspec = pm.registry("templates").get(args.template)
    topts = parse_options(tspec.options, args.template_options, owner=f"template '{tspec.name}'", section="template")
    if topts is None and tspec.options is not None:
        topts = tspec.options()
    # Fail now, with one line, if the tokenizer lacks a token the template declares, or
    # the template cannot render with this tokenizer.
    check_template_tokens(tspec, tok)
    tspec.render([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], tokenizer=tok, options=topts)
    return sft_chunk, (tok_path, tspec, topts, args.max_length), _to_item_sft, None, tspec, topts


def prepare(pm: Any, args: PrepareArgs) -> dict[str, Any]:
    """Run the whole preparation; returns the manifest (also written to ``out``).

    Raises:
        ConfigError: bad option, unknown packer/template, output folder not empty.
        DataError: bad input with ``on_error="stop"`` (``file:line: problem``).
    """
    _validate(args)
    check_executor(pm, args.executor, args.ray_address)
    t0 = time.perf_counter()
    specs = [readers.parse_input(s) for s in args.inputs]
    weighted = [s.weight is not None for s in specs]
    if any(weighted) and not all(weighted):
        raise ConfigError("give a :WEIGHT to every --input or to none")
    weights = [s.weight for s in specs] if all(weighted) else None

    tok = load_tokenizer(str(args.tokenizer))
    sp = special_tokens(tok, args.add_bos, args.add_eos)
    vocab_size = len(tok)
    pspec, popts, packer = _make_packer(pm, args, sp.pad_id)
    splits = pspec.splits_documents if pspec else False
    fn, fn_args, to_item, field_name, tspec, topts = _make_job(pm, args, tok)
    stats = [InputStats(s.pattern, s.weight) for s in specs]

    # Records each input's reader has produced (this epoch), read ahead or not, and the
    # reader itself: what the mixer never took is counted as not read (--mix downsample).
    seen = [[0, 0] for _ in specs]  # [records, bytes]
    readers_now: list = [None] * len(specs)

    def factory(i: int):
        def make():
            def records():
                for rec in readers.iter_input(specs[i], field_name):
                    seen[i][0] += 1
                    seen[i][1] += rec.nbytes
                    yield rec

            seen[i][0] = seen[i][1] = 0
            readers_now[i] = records()
            return iter(ChunkStream(readers_now[i], to_item, executor, args.chunk_records, args.chunk_bytes))

        return make

    mixer = Mixer([factory(i) for i in range(len(specs))], weights, lambda it: 0 if it[1] else len(it[2]), args.mix)
    total_bytes = sum(os.path.getsize(p) for s in specs for p in readers.expand(s))
    out = Path(args.out)
    _prepare_out(out, args.overwrite)

    writer = ShardWriter(out)
    rows_stats = RowStats()
    dropped = Dropped()  # rows without a label token that a (plugin) packer returned anyway
    rng = np.random.default_rng(args.seed)
    window: list = []

    def emit(rows: list) -> None:
        rows = trainable(rows, dropped)
        if not rows:
            return
        rows_stats.add(rows)
        if args.shuffle_window <= 1:
            writer.write(rows)
            return
        window.extend(rows)
        if len(window) >= args.shuffle_window:
            flush_window()

    def flush_window() -> None:
        order = rng.permutation(len(window))
        writer.write([window[j] for j in order])
        window.clear()

    executor = make_executor(pm, args.executor, args.num_proc, fn, fn_args, args.ray_address)
    progress = Progress(total_bytes, args.progress, f"prepare {args.kind}")
    try:
        for i, (rec, reason, ids, labels, cut, nbytes) in mixer:
            st = stats[i]
            st.read += 1
            st.bytes_read += rec.nbytes
            st.files.add(rec.path)
            progress.advance(rec.progress_bytes, 0 if reason else len(ids))  # on-disk bytes, as the total
            if reason:
                if args.on_error == "stop" and reason not in POLICY_SKIPS:
                    hint = " (use --on-error skip to skip and count such records)"
                    raise DataError(reason + hint, path=rec.path, line=rec.line or None)
                st.skipped[reason_key(reason)] += 1
                continue
            if len(ids) and (int(ids.max()) >= vocab_size or int(ids.min()) < 0):
                bad = int(ids.max()) if int(ids.max()) >= vocab_size else int(ids.min())
                raise DataError(f"token id {bad} outside the vocabulary (size {vocab_size}): check the tokenize plugin", path=rec.path, line=rec.line or None)
            st.tokens_in += len(ids) + cut  # cut: turns an SFT conversation lost to max_length
            st.tokens_truncated += cut
            doc = Doc(ids, labels, i, nbytes)
            unusable = None if labels is ids else masked_reason(labels, args.max_length)
            if unusable:
                st.skipped[unusable] += 1
                st.tokens_skipped += len(doc)
                continue
            if args.kind == "sft" or (splits and args.long_doc == "split"):
                pieces = [doc]
            else:
                pieces = fit_long(doc, args.max_length, args.long_doc, sp.eos_id)
            if not pieces:
                st.skipped["longer than max_length"] += 1
                st.tokens_skipped += len(doc)
                continue
            kept = sum(len(p) for p in pieces)
            st.packed += 1
            st.tokens_packed += kept
            st.tokens_truncated += len(doc) - kept
            for piece in pieces:
                emit(packer.add(piece))
        emit(packer.flush())
        if window:
            flush_window()
        for i, st in enumerate(stats):
            # Only --mix downsample leaves an input unfinished (in its first pass); read
            # the rest of it (parsed, not tokenized) to count what was left out.
            if not mixer.exhausted[i] and readers_now[i] is not None:
                for _rec in readers_now[i]:
                    pass
                st.not_read, st.bytes_not_read = seen[i][0] - st.read, seen[i][1] - st.bytes_read
        progress.close()
        num_shards = writer.close(args.num_shards)
    except BaseException:
        progress.close()
        writer.abort()
        raise
    finally:
        executor.close()

    for i, st in enumerate(stats):
        st.epochs, st.exhausted = mixer.epochs[i], mixer.exhausted[i]
    for d in (dropped, getattr(packer, "dropped", None)):
        if isinstance(d, Dropped):
            rows_stats.dropped_rows += d.rows
            rows_stats.dropped_tokens += d.tokens
    manifest = _manifest(args, tok, sp, pspec, popts, tspec, topts, weights, stats, rows_stats, num_shards, time.perf_counter() - t0)
    write_manifest(out, manifest)
    return manifest


def _manifest(args, tok, sp, pspec, popts, tspec, topts, weights, stats, rows_stats, num_shards, seconds) -> dict[str, Any]:
    """The manifest dict (schema in docs/data.md and :mod:`cptcore.data.manifest`)."""
    tok_path = str(args.tokenizer)
    total_packed = sum(s.tokens_packed for s in stats)
    wsum = sum(weights) if weights else None
    skipped: dict[str, int] = {}
    for st in stats:
        for k, v in st.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    # Useful = non-pad tokens over the tokens stored (sum of row lengths): rows padded to
    # max_length count max_length each, unpadded rows (SFT without a packer) their own
    # length; padding added per micro-batch at training time is not known here.
    slots = rows_stats.slots
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": args.kind,
        "tokenizer": {
            "name_or_path": tok_path,
            "vocab_hash": tokenizer_vocab_hash(tok),
            "vocab_size": len(tok),
            # ids added around every pretraining document (SFT: the template decides)
            "bos_id": sp.bos_id if args.kind == "pretrain" else None,
            "eos_id": sp.eos_id if args.kind == "pretrain" else None,
        },
        "pad_id": sp.pad_id,
        "max_length": args.max_length,
        "packer": pspec.name if pspec else None,
        "packer_options": options_to_dict(popts) if popts is not None else {},
        "template": tspec.name if tspec else None,
        "template_options": options_to_dict(topts) if topts is not None else {},
        "long_doc": args.long_doc,
        "mix": args.mix if weights else None,
        "inputs": [st.to_dict(total_packed, wsum) for st in stats],
        "documents": {
            "read": sum(s.read for s in stats),
            "packed": sum(s.packed for s in stats),
            "skipped": dict(sorted(skipped.items())),
            "not_read": sum(s.not_read for s in stats),
        },
        "bytes": {"read": sum(s.bytes_read for s in stats), "not_read": sum(s.bytes_not_read for s in stats)},
        "tokens": {
            "in": sum(s.tokens_in for s in stats),
            "out": rows_stats.tokens_out,
            "pad": rows_stats.pad,
            "truncated": sum(s.tokens_truncated for s in stats),
            "skipped": sum(s.tokens_skipped for s in stats),
            "labels": rows_stats.label_tokens,
            "dropped": rows_stats.dropped_tokens,
        },
        # UTF-8 bytes of the tokens that carry loss (sum of the label_bytes column; None
        # when a tokenize/packer plugin gave no bytes): the divisor of bits per byte
        "label_bytes": rows_stats.label_bytes,
        "packs": rows_stats.packs,
        "packs_without_labels": rows_stats.without_labels,  # must be 0: cpt train refuses the folder otherwise
        "packs_dropped": rows_stats.dropped_rows,  # rows left out for having no label token
        "longest_pack": rows_stats.longest,
        "useful_token_fraction": (rows_stats.tokens_out / slots) if slots else 0.0,
        "num_shards": num_shards,
        "seed": args.seed,
        "shuffle_window": args.shuffle_window,
        "seconds": round(seconds, 3),
        "command": args.command,
        "cptcore_version": __version__,
    }
    return manifest
