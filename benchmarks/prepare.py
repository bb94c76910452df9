"""Benchmark `cpt prepare pretrain` against the bare tokenizer and the usual recipe.

Measures, in one run and on the same text:

* ceiling: the bare fast tokenizer's batch encoding (``tok(batch)`` over batches of 1000
  documents, texts already in memory, nothing written);
* naive: the usual recipe (Hugging Face ``run_clm.py``): ``Dataset.map`` per example,
  then a batched group-and-chunk map that concatenates and drops the remainder;
* cptcore: ``prepare()`` as ``cpt prepare pretrain`` runs it (read JSONL, tokenize,
  pack with ``splice``, write Arrow shards and the manifest);

and the useful-token fraction (non-pad tokens / slots) of every packer at max_length
2048. Prints ratios to the ceiling and writes ``benchmarks/results/prepare.json``.

Usage::

    python benchmarks/prepare.py                       # bundled real text (~1.9 MB)
    python benchmarks/prepare.py --corpus PATH/TO/corpus.jsonl --num-proc 2   # your own, larger JSONL
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import print_table, write_result  # noqa: E402  (shared by all benchmarks)

BUNDLED = [
    ROOT / "cptcore/assets/data/zh_law_train.jsonl",
    ROOT / "tests/data/en_python_docs_sample.jsonl",
    ROOT / "tests/data/zh_poetry_sample.jsonl",
]


def read_texts(paths):
    texts = []
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            texts.extend(json.loads(line)["text"] for line in fh if line.strip())
    return texts


def bench_bare(tok, texts, eos):
    """``tok(batch)``: the Hugging Face call everyone uses."""
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(texts), 1000):
        ids = tok(texts[i : i + 1000], add_special_tokens=False)["input_ids"]
        n += sum(len(x) for x in ids) + len(ids)  # + one EOS per document, as prepare adds
    return n, time.perf_counter() - t0


def bench_rust(tok, texts, eos):
    """The Rust tokenizer alone, no offsets (``encode_batch_fast``): the strictest ceiling."""
    backend = tok.backend_tokenizer
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(texts), 1000):
        encs = backend.encode_batch_fast(texts[i : i + 1000], add_special_tokens=False)
        n += sum(len(e.ids) for e in encs) + len(encs)
    return n, time.perf_counter() - t0


def bench_naive(tok, texts, eos, max_length):
    """run_clm.py's recipe: per-example tokenize map, then group_texts (drops the tail)."""
    from datasets import Dataset
    from datasets.utils import logging as ds_logging

    ds_logging.disable_progress_bar()
    t0 = time.perf_counter()
    ds = Dataset.from_dict({"text": texts})
    ds = ds.map(lambda ex: {"input_ids": tok(ex["text"], add_special_tokens=False)["input_ids"] + [eos]}, remove_columns=["text"])

    def group(batch):
        flat = [t for ids in batch["input_ids"] for t in ids]
        total = len(flat) // max_length * max_length
        return {"input_ids": [flat[i : i + max_length] for i in range(0, total, max_length)]}

    grouped = ds.map(group, batched=True, batch_size=1000)
    seconds = time.perf_counter() - t0
    tokens_in = sum(len(x) for x in ds["input_ids"])
    return tokens_in, seconds, len(grouped) * max_length / max(tokens_in, 1)


def bench_cptcore(tok_dir, paths, out, packer, max_length, num_proc):
    from cptcore import make_plugin_manager
    from cptcore.data.pipeline import PrepareArgs, prepare

    pm = make_plugin_manager(entrypoints=False)
    args = PrepareArgs(
        kind="pretrain", tokenizer=str(tok_dir), inputs=tuple(map(str, paths)), out=str(out),
        max_length=max_length, packer=packer, num_proc=num_proc, overwrite=True,
    )
    t0 = time.perf_counter()
    m = prepare(pm, args)
    return m, time.perf_counter() - t0


def bench_cli_memory(tok_dir, paths, out, max_length):
    """``cpt prepare pretrain`` in a fresh process: wall seconds (startup included) and
    its own peak RSS (``VmHWM``, MiB; includes ~0.45 GB of imported libraries and the
    memory-mapped output pages touched while sharding)."""
    import subprocess

    argv = ["cpt", "prepare", "pretrain", "--tokenizer", str(tok_dir), "--out", str(out), "--overwrite",
            "--max-length", str(max_length), "--no-progress"]
    for p in paths:
        argv += ["--input", str(p)]
    code = (
        "import atexit, sys\n"
        "def hwm():\n"
        "    line = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "    print('VMHWM_KIB', line.split()[1], file=sys.stderr)\n"
        "atexit.register(hwm)\n"
        f"sys.argv = {argv!r}\n"
        "from cptcore.cli.main import main\n"
        "main()\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    kib = [int(l.split()[1]) for l in proc.stderr.splitlines() if l.startswith("VMHWM_KIB")]
    return secs, (kib[0] / 1024 if kib else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", action="append", help="JSONL file(s) with a 'text' field (default: bundled real text)")
    ap.add_argument("--tokenizer", default=str(ROOT / "tests/data/tokenizers/smollm2"))
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--num-proc", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="best of N for every method (the machine may be shared)")
    ap.add_argument("--name", default="prepare")
    opts = ap.parse_args()
    paths = [Path(p) for p in opts.corpus] if opts.corpus else BUNDLED

    from cptcore.data.tokenize import load_tokenizer

    tok = load_tokenizer(opts.tokenizer)  # cached, as in a long run
    texts = read_texts(paths)
    chars = sum(len(t) for t in texts)
    eos = tok.eos_token_id
    bench_rust(tok, texts, eos)  # warm-up (thread pool, caches)
    best: dict[str, float] = {}
    tokens: dict[str, int] = {}
    results, useful = {}, {}
    # The machine is shared: interleave the methods and keep each one's best of --repeats.
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(opts.repeats):
            for name, fn in (("bare_tokenizer", bench_bare), ("bare_rust_encode_batch_fast", bench_rust)):
                n, secs = fn(tok, texts, eos)
                tokens[name], best[name] = n, min(secs, best.get(name, float("inf")))
            n, secs, naive_kept = bench_naive(tok, texts, eos, opts.max_length)
            tokens["naive_map_group"], best["naive_map_group"] = n, min(secs, best.get("naive_map_group", float("inf")))
            for packer in ("splice", "greedy", "bfd"):
                m, secs = bench_cptcore(opts.tokenizer, paths, Path(tmp) / packer, packer, opts.max_length, opts.num_proc)
                prev = results.get(packer, {}).get("seconds", float("inf"))
                results[packer] = {"seconds": min(secs, prev), "tokens": m["tokens"]["in"], "packs": m["packs"], "useful_token_fraction": m["useful_token_fraction"]}
                useful[packer] = m["useful_token_fraction"]
        cli_s, cli_rss = bench_cli_memory(opts.tokenizer, paths, Path(tmp) / "cli", opts.max_length)
    corpus_mib = sum(p.stat().st_size for p in paths) / 2**20
    bare_tokens = tokens["bare_tokenizer"]
    cpt = results["splice"]
    rate = {name: tokens[name] / best[name] for name in best}
    rate["cpt_prepare_splice"] = cpt["tokens"] / cpt["seconds"]
    ceiling = rate["bare_tokenizer"]
    print_table(
        f"cpt prepare pretrain vs baselines · {len(texts):,} docs, {chars / 1e6:.1f} M chars, {bare_tokens:,} tokens",
        ["method", "tokens/s", "× bare tokenizer", "useful tokens"],
        [
            ["bare tokenizer batch encode tok(batch) (ceiling)", f"{rate['bare_tokenizer']:,.0f}", 1.0, "-"],
            ["bare Rust encode_batch_fast (no offsets)", f"{rate['bare_rust_encode_batch_fast']:,.0f}", rate["bare_rust_encode_batch_fast"] / ceiling, "-"],
            ["naive map + group-and-chunk", f"{rate['naive_map_group']:,.0f}", rate["naive_map_group"] / ceiling, f"{naive_kept:.2%} (tail dropped)"],
            [f"cpt prepare pretrain (splice, num_proc={opts.num_proc})", f"{rate['cpt_prepare_splice']:,.0f}", rate["cpt_prepare_splice"] / ceiling, f"{useful['splice']:.3%}"],
        ],
    )
    print_table(
        f"useful-token fraction at max_length {opts.max_length}",
        ["packer", "useful tokens", "packs", "seconds"],
        [[p, f"{r['useful_token_fraction']:.3%}", r["packs"], r["seconds"]] for p, r in results.items()],
    )
    ratio = rate["cpt_prepare_splice"] / ceiling
    strict = rate["cpt_prepare_splice"] / rate["bare_rust_encode_batch_fast"]
    print(f"cpt/bare = {ratio:.2f}× (target ≥ 0.8×), cpt/bare Rust = {strict:.2f}×; splice useful = {useful['splice']:.3%} (target ≥ 99.5%)")
    out = write_result(
        opts.name,
        {
            "corpus": [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in paths],
            "documents": len(texts),
            "characters": chars,
            "tokenizer": opts.tokenizer if not Path(opts.tokenizer).is_relative_to(ROOT) else str(Path(opts.tokenizer).relative_to(ROOT)),
            "max_length": opts.max_length,
            "num_proc": opts.num_proc,
            "repeats_best_of": opts.repeats,
            "seconds_best": {**best, "cpt_prepare_splice": cpt["seconds"]},
            "tokens_per_second": rate,
            "ratio_to_bare_tokenizer": {k: v / ceiling for k, v in rate.items()},
            "useful_token_fraction": {**useful, "naive_group_and_chunk_kept": naive_kept},
            "packers": results,
            "cli_subprocess": {"seconds_wall": cli_s, "peak_rss_mib": cli_rss, "corpus_mib": corpus_mib},
            "targets": {"ratio_to_bare_tokenizer": 0.8, "splice_useful_token_fraction": 0.995},
            "targets_met": {"speed": ratio >= 0.8, "splice_useful": useful["splice"] >= 0.995},
        },
    )
    print(f"cpt prepare pretrain subprocess: {cli_s:.1f} s wall (startup included), peak RSS {cli_rss:.0f} MiB for a {corpus_mib:.1f} MiB corpus")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
