"""Peak memory of ``cpt train`` (fp32 AdamW, ``ddp``, one process, CPU) against the
estimate ``cpt train --dry-run`` prints, for several shapes, with and without gradient
checkpointing.

Shapes (``--shapes``, default all three; each is run twice, checkpointing off and on):

* ``smollm2-1x256``: SmolLM2-135M full fine-tune, micro-batch 1 x 256 tokens;
* ``smollm2-4x512``: SmolLM2-135M, 4 x 512 (about 6 GB: the heaviest case);
* ``tiny-8x128``: a random-init LLaMA (hidden 64, 2 layers) with SmolLM2's 49,152-token
  vocabulary, 8 x 128: the logits and their gradient dominate.

Measured, in separate subprocesses:

* **runtime floor**: peak RSS of a process that only imports what ``cpt train`` imports
  (torch, transformers, ColossalAI, cptcore's engine): memory no model estimate covers;
* **training**: ``cpt train`` for ``--steps`` steps; the largest ``peak_memory_mb`` in
  ``metrics.jsonl`` (the process's peak RSS while training, before the final checkpoint
  and export; model loading included);
* **estimate**: ``total`` (or ``total (checkpointing)``) of the per-rank estimate of the
  dry run (:func:`cptcore.train.dryrun.plan_dry_run`, the function ``--dry-run`` calls).

The ratio printed is (estimate + runtime floor) / measured training peak; the target is
within 0.85-1.15. Run::

    .venv/bin/python benchmarks/memory.py [--shapes smollm2-1x256,tiny-8x128] [--steps 3]

Writes ``benchmarks/results/memory.json`` (``--name``). ``--reuse-measured FILE`` skips
the training runs and recomputes only the estimates against the figures in FILE (to
compare a changed estimate with the same measurements).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FLOOR_SNIPPET = (
    "import resource, torch, transformers, colossalai\n"
    "import cptcore.train.loop, cptcore.train.build, cptcore.train.data\n"
    "from cptcore.plugins import make_plugin_manager; make_plugin_manager()\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
)

#: name -> (model kind, micro-batch, sequence length)
SHAPES = {
    "smollm2-1x256": ("smollm2", 1, 256),
    "smollm2-4x512": ("smollm2", 4, 512),
    "tiny-8x128": ("tiny", 8, 128),
}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def runtime_floor_mb() -> float:
    proc = subprocess.run([sys.executable, "-c", FLOOR_SNIPPET], capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def train_args(model: Path, data: Path, out: Path, steps: int, batch: int, ckpt: bool) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--strategy", "ddp",
            "--max-steps", str(steps), "--micro-batch-size", str(batch), "--set", "logging.progress=false",
            "--set", "strategy.precision=fp32", "--set", f"model.gradient_checkpointing={str(ckpt).lower()}",
            "--set", "checkpointing.save_every=0"]


def estimate_mb(model: Path, data: Path, steps: int, batch: int, ckpt: bool) -> dict:
    """The dry run's estimate rows, in MiB (the same function ``--dry-run`` calls)."""
    from cptcore.config import load_config
    from cptcore.plugins import make_plugin_manager
    from cptcore.train.dryrun import plan_dry_run

    cfg = load_config(overrides={
        "model.path": str(model), "data.train": [str(data)], "training.out_dir": "/nonexistent-dry",
        "training.max_steps": steps, "training.micro_batch_size": batch, "strategy.name": "ddp",
        "strategy.precision": "fp32",
    }, sets=[f"model.gradient_checkpointing={str(ckpt).lower()}"])
    mem = plan_dry_run(cfg, make_plugin_manager(entrypoints=False), 1).memory
    rows = {label: value / 2**20 for label, value in mem.rows()}
    rows["estimate"] = rows["total (checkpointing)"] if ckpt else rows["total"]
    return rows


def measure(model: Path, data: Path, out: Path, steps: int, batch: int, ckpt: bool) -> dict:
    cpt = str(Path(sys.executable).parent / "cpt")
    proc = subprocess.Popen([cpt, *train_args(model, data, out, steps, batch, ckpt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"cpt train failed:\n{stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    peaks = [r["peak_memory_mb"] for r in records if "peak_memory_mb" in r]
    return {"train_peak_rss_mb": max(peaks), "per_step_peak_mb": peaks}


def model_dir(kind: str, work: Path) -> Path:
    from cptcore.assets import smollm2_hf_dir

    base = smollm2_hf_dir()
    if kind == "smollm2":
        return base
    from cptcore.testing import make_tiny_llama

    out = work / "tiny"
    if not (out / "config.json").is_file():
        make_tiny_llama(out, base, **TINY)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--ckpt", default="off,on", help="gradient checkpointing settings to run: off,on | off | on")
    ap.add_argument("--name", default="memory", help="results file name (benchmarks/results/NAME.json)")
    ap.add_argument("--reuse-measured", type=Path, default=None, metavar="FILE",
                    help="take the measured figures from an earlier results FILE; only recompute the estimates")
    args = ap.parse_args()
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    ckpts = [{"off": False, "on": True}[c] for c in args.ckpt.split(",") if c]

    from _machine import print_table, write_result
    from train_overhead import prepare_data

    previous = json.loads(args.reuse_measured.read_text()) if args.reuse_measured else None
    floor = previous["runtime_floor_mb"] if previous else runtime_floor_mb()
    results, table = [], []
    with tempfile.TemporaryDirectory(prefix="cpt-bench-memory-") as tmp:
        work = Path(tmp)
        for name in shapes:
            kind, batch, length = SHAPES[name]
            model = model_dir(kind, work)
            data = prepare_data(model, work / kind, length)
            for ckpt in ckpts:
                est = estimate_mb(model, data, args.steps, batch, ckpt)
                if previous:
                    old = next(r for r in previous["runs"] if r["shape"] == name and r["gradient_checkpointing"] == ckpt)
                    measured = {k: old[k] for k in ("train_peak_rss_mb", "per_step_peak_mb")}
                else:
                    measured = measure(model, data, work / f"run-{name}-{ckpt}", args.steps, batch, ckpt)
                ratio = (est["estimate"] + floor) / measured["train_peak_rss_mb"]
                results.append({"shape": name, "gradient_checkpointing": ckpt, "micro_batch": batch, "seq_len": length,
                                "estimate_mb": est, **measured, "ratio_estimate_plus_floor_to_measured": ratio})
                table.append([name, "on" if ckpt else "off", est["estimate"] + floor, measured["train_peak_rss_mb"], ratio])
                print(f"{name} ckpt={'on' if ckpt else 'off'}: estimate+floor {est['estimate'] + floor:,.0f} MiB, "
                      f"measured {measured['train_peak_rss_mb']:,.0f} MiB, ratio {ratio:.3f}", flush=True)
    print_table(f"memory: cpt train, fp32 AdamW, ddp 1 process, {args.steps} steps (MiB; runtime floor {floor:,.0f})",
                ["shape", "grad ckpt", "estimate + floor", "measured peak RSS", "ratio (target 0.85-1.15)"], table)
    out = write_result(args.name, {"settings": vars(args) | {"reuse_measured": str(args.reuse_measured or "")},
                                   "runtime_floor_mb": floor, "runs": results,
                                   "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS")})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
