"""Peak memory of ``cpt clean`` and ``cpt prepare pretrain`` against input size (issue
16 item 4): three input sizes, each run under a memory limit, the ratio of each peak to
the smallest size's.

Input: :func:`cptcore.clean.synthetic.synthetic_corpus` (real law lines, documents of
~650 characters) with 5% exact and 10% near duplicates planted, so deduplication has
work at every size. ``cpt clean`` runs the default filters (quality, repetition, exact,
near) with ``--num-proc`` workers; ``cpt prepare pretrain`` tokenizes the same corpus
(SmolLM2 tokenizer, bundled) into 2048-token rows.

Memory (benchmarks/_rss.py): the driver's peak ``RssAnon`` (what it allocated) and
``ru_maxrss`` (file pages included); with ``--memory-limit-mb`` each run is in a memory
cgroup of that size (driver + workers; its peak counts page cache, which the kernel
reclaims at the limit) -- where no cgroup can be made, the driver gets the same figure
as ``RLIMIT_DATA`` instead, and the result says which limit was enforced.

Run (the issue's figures; ~1-2 hours on 2 cores, needs ~3x the largest size free on
disk next to ``--tmp``)::

    nice -n 10 .venv/bin/python benchmarks/scale.py --sizes 100 500 1500 --memory-limit-mb 1024

Writes ``benchmarks/results/scale.json`` (figures in benchmarks/README.md, *Memory at
scale*). The corpora and outputs are deleted after
each size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _machine import print_table, write_result  # noqa: E402
from _rss import cgroup_root, run_cpt  # noqa: E402

TOKENIZER = ROOT / "tests/data/tokenizers/smollm2"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=3, default=[100, 500, 1500], help="Input sizes in MB (three, smallest first).")
    ap.add_argument("--num-proc", type=int, default=2, help="Workers of each run (--num-proc).")
    ap.add_argument("--memory-limit-mb", type=int, default=None, help="Memory each run may use (cgroup, else RLIMIT_DATA of the driver).")
    ap.add_argument("--tmp", default=None, help="Folder for the corpora and outputs (default: the system's temporary folder).")
    ap.add_argument("--shard-mb", type=int, default=None, help="cpt clean --shard-mb (default: cpt clean's 16; input in flight is max(2, 2 x workers) shards).")
    ap.add_argument("--skip-prepare", action="store_true", help="Measure cpt clean only.")
    ap.add_argument("--nice", type=int, default=10, help="Niceness of the runs (a shared machine).")
    ap.add_argument("--tight", type=int, nargs=2, metavar=("INPUT_MB", "LIMIT_MB"), default=None,
                    help="Instead: one cpt clean (--num-proc 1 --shard-mb 2) of INPUT_MB under a cgroup of LIMIT_MB < INPUT_MB "
                         "(results/scale_tight.json).")
    opts = ap.parse_args()
    from cptcore.clean.synthetic import synthetic_corpus

    if opts.tight:
        tight(opts, synthetic_corpus)
        return

    limit = {}
    if opts.memory_limit_mb:
        group = cgroup_root()
        limit = ({"cgroup_mb": opts.memory_limit_mb} if group else {"data_limit": opts.memory_limit_mb << 20})
    enforced = ("cgroup v%d memory limit" % cgroup_root()[1] if "cgroup_mb" in limit else
                "RLIMIT_DATA of the driver" if limit else "none (peak RSS sampled only)")
    result: dict = {"limit": {"mb": opts.memory_limit_mb, "enforced": enforced}, "num_proc": opts.num_proc, "shard_mb": opts.shard_mb, "sizes": []}
    shard = ["--shard-mb", str(opts.shard_mb)] if opts.shard_mb else []
    with tempfile.TemporaryDirectory(dir=opts.tmp) as tmp:
        tmp = Path(tmp)
        for mb in opts.sizes:
            corpus = tmp / f"corpus{mb}.jsonl"
            docs = synthetic_corpus(corpus, mb << 20, exact_dups=0.05, near_dups=0.10)
            row: dict = {"input_mb": mb, "documents": docs}
            out = tmp / f"clean{mb}"
            row["clean"] = run_cpt(["clean", "--input", str(corpus), "--out", str(out), "--num-proc", str(opts.num_proc), "--no-progress", *shard],
                                   nice=opts.nice, **limit)
            stats = json.loads((out / "stats.json").read_text())
            row["clean"]["documents"] = stats["documents"]
            shutil.rmtree(out)
            if not opts.skip_prepare:
                out = tmp / f"prep{mb}"
                row["prepare"] = run_cpt(["prepare", "pretrain", "--tokenizer", str(TOKENIZER), "--input", str(corpus), "--out", str(out),
                                          "--max-length", "2048", "--num-proc", str(opts.num_proc), "--no-progress"], nice=opts.nice, **limit)
                shutil.rmtree(out)
            corpus.unlink()
            result["sizes"].append(row)
            print(json.dumps(row), flush=True)
    base = result["sizes"][0]
    rows = []
    for r in result["sizes"]:
        for what in ("clean", "prepare"):
            if what in r:
                r[what]["peak_anon_over_smallest"] = round(r[what]["peak_anon_mb"] / base[what]["peak_anon_mb"], 3)
                rows.append([what, r["input_mb"], r["documents"], r[what]["peak_anon_mb"], r[what]["peak_anon_over_smallest"],
                             r[what]["maxrss_mb"], r[what].get("cgroup_peak_mb", "-"), r[what]["seconds"]])
    print_table(f"peak memory against input size (limit: {enforced}, {opts.memory_limit_mb} MB)",
                ["command", "input MB", "docs", "peak RssAnon MB", "/ smallest", "maxrss MB", "cgroup peak MB", "s"], rows)
    print(f"wrote {write_result('scale', result)}")


def tight(opts, synthetic_corpus) -> None:
    """``cpt clean`` of an input larger than the memory cgroup it runs in."""
    mb, limit_mb = opts.tight
    if cgroup_root() is None:
        raise SystemExit("--tight needs a writable memory cgroup")
    with tempfile.TemporaryDirectory(dir=opts.tmp) as tmp:
        corpus, out = Path(tmp) / "corpus.jsonl", Path(tmp) / "clean"
        docs = synthetic_corpus(corpus, mb << 20, exact_dups=0.05, near_dups=0.10)
        row = run_cpt(["clean", "--input", str(corpus), "--out", str(out), "--num-proc", "1", "--shard-mb", "2", "--no-progress"],
                      nice=opts.nice, cgroup_mb=limit_mb)
        row.update(input_mb=mb, documents=docs, stats=json.loads((out / "stats.json").read_text())["documents"])
    print(json.dumps(row))
    print(f"wrote {write_result('scale_tight', row)}")


if __name__ == "__main__":
    main()
