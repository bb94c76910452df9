"""Memory and executor overhead of ``cpt clean`` and ``cpt prepare pretrain``.

Measured, each run in its own subprocess on a synthetic corpus of real law lines
(:func:`cptcore.clean.synthetic.synthetic_corpus`, distinct documents of ~650
characters):

* **peak memory against input size** at three small sizes (benchmarks/_rss.py: peak
  ``RssAnon`` and ``ru_maxrss``); ``cpt clean --shard-mb 2`` with quality, exact and
  near, and with quality + exact only (both dedup indexes are on disk since
  cptcore.clean.index; benchmarks/scale.py measures 100 MB to 1.5 GB under a limit);
* **local vs Ray**: the same ``cpt clean`` and ``cpt prepare`` with ``--num-proc 2``
  locally (fork pool) and ``--executor ray --num-proc 2`` (a local Ray instance started
  by the run, 2 workers); the ratio is Ray / local wall time, and the outputs are
  compared byte for byte.

Run: ``.venv/bin/python benchmarks/clean.py [--sizes 4 16 48] [--ray-size 8]``
(for the issue's 1-2 GB use benchmarks/scale.py).
Writes ``benchmarks/results/clean.json``.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _machine import print_table, write_result  # noqa: E402
from _rss import run_cpt  # noqa: E402

TOKENIZER = ROOT / "tests/data/tokenizers/smollm2"
SHARD_MB = 2  # cpt clean --shard-mb: in-flight input is 2 shards per worker, well below every size measured


def run(args: list[str]) -> dict:
    return run_cpt(args)


def clean_args(corpus: Path, out: Path, near: bool, extra=()) -> list[str]:
    filters = ["--filter", "quality", "--filter", "exact"] + (["--filter", "near"] if near else [])
    return ["clean", "--input", str(corpus), "--out", str(out), *filters, "--shard-mb", str(SHARD_MB), "--no-progress", *extra]


def prepare_args(corpus: Path, out: Path, extra=()) -> list[str]:
    return ["prepare", "pretrain", "--tokenizer", str(TOKENIZER), "--input", str(corpus), "--out", str(out),
            "--max-length", "2048", "--no-progress", *extra]


def same_tree(a: Path, b: Path, pattern: str) -> bool:
    fa, fb = sorted(a.glob(pattern)), sorted(b.glob(pattern))
    return [p.name for p in fa] == [p.name for p in fb] and all(filecmp.cmp(x, y, shallow=False) for x, y in zip(fa, fb))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=3, default=[4, 16, 48], help="Input sizes in MB (three).")
    ap.add_argument("--ray-size", type=int, default=8, help="Input MB of the local vs Ray comparison.")
    ap.add_argument("--no-ray", action="store_true", help="Skip the Ray comparison.")
    opts = ap.parse_args()
    from cptcore.clean.synthetic import synthetic_corpus

    result: dict = {"memory": [], "executors": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for mb in opts.sizes:
            corpus = tmp / f"c{mb}.jsonl"
            docs = synthetic_corpus(corpus, mb << 20)
            row = {"input_mb": mb, "documents": docs}
            row["clean_full"] = run(clean_args(corpus, tmp / f"cf{mb}", near=True))
            row["clean_no_near"] = run(clean_args(corpus, tmp / f"cn{mb}", near=False))
            row["prepare"] = run(prepare_args(corpus, tmp / f"p{mb}"))
            result["memory"].append(row)
            print(row, flush=True)
            corpus.unlink()
        if not opts.no_ray:
            corpus = tmp / "ray.jsonl"
            synthetic_corpus(corpus, opts.ray_size << 20)
            ex = {}
            for name, extra in (("local", ["--num-proc", "2"]), ("ray", ["--executor", "ray", "--num-proc", "2"])):
                ex[f"clean_{name}"] = run(clean_args(corpus, tmp / f"rc_{name}", near=True, extra=extra))
                ex[f"prepare_{name}"] = run(prepare_args(corpus, tmp / f"rp_{name}", extra=extra))
            ex["clean_identical"] = same_tree(tmp / "rc_local" / "shards", tmp / "rc_ray" / "shards", "*")
            ex["prepare_identical"] = same_tree(tmp / "rp_local", tmp / "rp_ray", "*.arrow")
            for what in ("clean", "prepare"):
                ex[f"{what}_ray_over_local"] = round(ex[f"{what}_ray"]["seconds"] / ex[f"{what}_local"]["seconds"], 3)
            ex["input_mb"] = opts.ray_size
            result["executors"] = ex
            print(ex, flush=True)
    rows = [[r["input_mb"], r["documents"], r["clean_full"]["peak_anon_mb"], r["clean_no_near"]["peak_anon_mb"], r["prepare"]["peak_anon_mb"],
             r["prepare"]["maxrss_mb"], r["clean_full"]["seconds"], r["prepare"]["seconds"]] for r in result["memory"]]
    print_table("peak anonymous RSS (MB) against input size", ["input MB", "docs", "clean", "clean w/o near", "prepare", "prepare maxrss", "clean s", "prepare s"], rows)
    out = write_result("clean", result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
