"""Peak memory of a full fine-tune of SmolLM2-135M at batch 1 x 256 tokens (fp32, ddp,
one process) against the estimate ``cpt train --dry-run`` prints.

Measured, in separate subprocesses:

* **runtime floor**: peak RSS of a process that only imports what ``cpt train`` imports
  (torch, transformers, ColossalAI, cptcore's engine) - memory that no model estimate
  covers;
* **training**: ``cpt train`` for ``--steps`` steps; ``peak_memory_mb`` of the last step
  in ``metrics.jsonl`` (the process's peak RSS while training, before the final
  checkpoint and export), and the whole process's peak RSS (``ru_maxrss`` of the child,
  which also covers saving the checkpoint and exporting ``final/``);
* **estimate**: the per-rank estimate of the dry run (parameters, gradients, optimizer
  states, activations without checkpointing; :mod:`cptcore.train.estimate`).

The ratio printed is measured training peak / (estimate + runtime floor).

Chunked loss vs before: the same training run again with the pre-chunking loss
(``--plugin benchmarks/_unchunked_loss.py --objective causal_lm_unchunked``: fp32
cross-entropy over the whole micro-batch at once); its peak RSS minus the chunked one's
is what the chunked ``causal_lm`` objective saves (``--no-baseline`` skips it).

Run: ``.venv/bin/python benchmarks/memory.py [--steps 3] [--batch 1] [--length 256]``
Writes ``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FLOOR_SNIPPET = (
    "import resource, torch, transformers, colossalai\n"
    "import cptcore.train.loop, cptcore.train.trainer, cptcore.train.losses\n"
    "from cptcore.plugins import make_plugin_manager; make_plugin_manager()\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
)


def runtime_floor_mb() -> float:
    proc = subprocess.run([sys.executable, "-c", FLOOR_SNIPPET], capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


EXTRA_SETS: list[str] = []  # --set items from the command line (e.g. strategy.gradient_as_bucket_view=true)


def train_args(model: Path, data: Path, out: Path, steps: int, batch: int) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--strategy", "ddp",
            "--max-steps", str(steps), "--micro-batch-size", str(batch), "--set", "logging.progress=false",
            "--set", "strategy.precision=fp32", *[x for item in EXTRA_SETS for x in ("--set", item)]]


def dry_run_estimate(model: Path, data: Path, out: Path, steps: int, batch: int) -> tuple[dict, str]:
    """The estimate ``cpt train --dry-run`` prints, as ``{row: MiB}``, and the printed text.

    The text comes from running the CLI; the figures from the same function it calls
    (:func:`cptcore.train.dryrun.plan_dry_run`), so nothing is parsed."""
    from cptcore.config import load_config
    from cptcore.plugins import make_plugin_manager
    from cptcore.train.dryrun import plan_dry_run

    cpt = str(Path(sys.executable).parent / "cpt")
    proc = subprocess.run([cpt, *train_args(model, data, out, steps, batch), "--dry-run"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cpt train --dry-run failed:\n{proc.stderr[-3000:]}")
    cfg = load_config(overrides={
        "model.path": str(model), "data.train": [str(data)], "training.out_dir": str(out),
        "training.max_steps": steps, "training.micro_batch_size": batch, "strategy.name": "ddp",
        "strategy.precision": "fp32",
    }, sets=EXTRA_SETS)
    mem = plan_dry_run(cfg, make_plugin_manager(entrypoints=False), 1).memory
    keep = ("parameters", "gradients", "optimizer states", "activations")
    return {label: value / 2**20 for label, value in mem.rows() if label in keep}, proc.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                    help="extra cpt train --set item, e.g. strategy.gradient_as_bucket_view=true")
    ap.add_argument("--name", default="memory", help="results file name (benchmarks/results/NAME.json)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run with the pre-chunking loss")
    args = ap.parse_args()
    EXTRA_SETS.extend(args.sets)

    from _machine import print_table, write_result
    from train_overhead import prepare_data

    from cptcore.assets import smollm2_hf_dir

    model = smollm2_hf_dir()
    floor = runtime_floor_mb()
    with tempfile.TemporaryDirectory(prefix="cpt-bench-memory-") as tmp:
        work = Path(tmp)
        data = prepare_data(model, work, args.length)
        estimate, dry_text = dry_run_estimate(model, data, work / "dry", args.steps, args.batch)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        proc = subprocess.run([str(Path(sys.executable).parent / "cpt"), *train_args(model, data, work / "run", args.steps, args.batch)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"cpt train failed:\n{proc.stderr[-3000:]}")
        child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if child_peak * 1024 <= before:
            child_peak = float("nan")  # an earlier child was bigger; ru_maxrss cannot tell
        records = [json.loads(l) for l in (work / "run" / "logs" / "metrics.jsonl").read_text().splitlines() if l.strip()]
        train_peak = max(r["peak_memory_mb"] for r in records)
        unchunked_peak = None
        if not args.no_baseline:
            cmd = [str(Path(sys.executable).parent / "cpt"), "--plugin", str(HERE / "_unchunked_loss.py"),
                   *train_args(model, data, work / "base", args.steps, args.batch), "--objective", "causal_lm_unchunked"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"cpt train (unchunked loss) failed:\n{proc.stderr[-3000:]}")
            base = [json.loads(l) for l in (work / "base" / "logs" / "metrics.jsonl").read_text().splitlines() if l.strip()]
            unchunked_peak = max(r["peak_memory_mb"] for r in base)

    est_total = sum(estimate.values()) if estimate else None
    rows = [["runtime floor (imports only)", floor, ""]]
    if estimate:
        rows += [[f"estimate: {k}", v, ""] for k, v in estimate.items()]
        rows.append(["estimate + floor", est_total + floor, 1.0])
    rows += [
        ["measured: peak RSS while training", train_peak, train_peak / (est_total + floor) if est_total else ""],
        ["measured: peak RSS incl. save/export", child_peak, child_peak / (est_total + floor) if est_total else ""],
    ]
    if unchunked_peak is not None:
        rows.append(["measured: peak RSS, loss before chunking", unchunked_peak, ""])
        rows.append(["  saved by the chunked loss", unchunked_peak - train_peak, ""])
    print_table(f"memory: SmolLM2-135M full fine-tune, fp32 AdamW, batch {args.batch} x {args.length}, ddp 1 process (MiB)",
                ["what", "MiB", "ratio to estimate + floor"], rows)
    out = write_result(args.name, {
        "settings": vars(args), "runtime_floor_mb": floor, "estimate_mb": estimate, "estimate_total_mb": est_total,
        "dry_run_output": dry_text[-4000:], "train_peak_rss_mb": train_peak, "process_peak_rss_mb": child_peak,
        "ratio_train_peak_to_estimate_plus_floor": (train_peak / (est_total + floor)) if est_total else None,
        "train_peak_rss_unchunked_loss_mb": unchunked_peak,
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
