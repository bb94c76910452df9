"""Peak memory of ``cpt train`` (fp32 AdamW, ``ddp``, one process, CPU) against the
estimate ``cpt train --dry-run`` prints, for several shapes, with and without gradient
checkpointing, with the chunked ``causal_lm`` loss and with the loss before chunking.

Shapes (``--shapes``, default all three; each is run with checkpointing off and on):

* ``smollm2-1x256``: SmolLM2-135M full fine-tune, micro-batch 1 x 256 tokens;
* ``smollm2-4x512``: SmolLM2-135M, 4 x 512 (about 6 GB: the heaviest case);
* ``tiny-8x128``: a random-init LLaMA (hidden 64, 2 layers) with SmolLM2's 49,152-token
  vocabulary, 8 x 128: the logits and their gradient dominate.

Losses (``--loss``, default ``chunked,unchunked``): ``chunked`` is the built-in
``causal_lm`` (its ``chunk_tokens`` option, default 1024: a micro-batch of at most 1024
tokens is one chunk, so only ``smollm2-4x512`` is chunked at the default), ``chunked:N``
the same with ``chunk_tokens=N``; ``unchunked`` is the baseline, the one-shot fp32
``F.cross_entropy`` over the whole micro-batch that ``causal_lm`` replaced, loaded as a
plugin file (``cpt --plugin benchmarks/_unchunked_loss.py train --objective
causal_lm_unchunked``). Both sides of a shape run in the same script, one after the other.

Measured, in separate subprocesses:

* **runtime floor**: peak RSS of a process that only imports what ``cpt train`` imports
  (torch, transformers, ColossalAI, cptcore's engine): memory no model estimate covers;
* **training**: ``cpt train`` for ``--steps`` steps; the largest ``peak_memory_mb`` in
  ``metrics.jsonl`` (the process's peak RSS while training, before the final checkpoint
  and export; model loading included);
* **estimate**: ``total`` (or ``total (checkpointing)``) of the per-rank estimate of the
  dry run (:func:`cptcore.train.dryrun.plan_dry_run`, the function ``--dry-run`` calls;
  the objective declares its chunk length, ``ObjectiveSpec.loss_chunk_tokens``);
* **loss difference**: per shape, the model's fp32 logits for its first training
  micro-batch, and both losses and their gradients with respect to the logits computed
  from them in this process: max abs and relative difference of the loss, max abs of the
  gradient; and the ``loss`` both runs logged at every step.

Printed: (estimate + runtime floor) / measured training peak per run (target within
0.85-1.15), and the peak RSS of chunked / unchunked per shape. Run::

    .venv/bin/python benchmarks/memory.py [--shapes smollm2-1x256,tiny-8x128] [--steps 3] [--loss chunked]

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
UNCHUNKED_PLUGIN = HERE / "_unchunked_loss.py"
#: --loss name -> (objective, plugin file or None); ``chunked:N`` is ``chunked`` with chunk_tokens=N
LOSSES = {"chunked": ("causal_lm", None), "unchunked": ("causal_lm_unchunked", UNCHUNKED_PLUGIN)}


def loss_choice(loss: str) -> tuple[str, Path | None, list[str]]:
    """``(objective, plugin file, --set values)`` of a ``--loss`` entry."""
    name, _, chunk = loss.partition(":")
    objective, plugin = LOSSES[name]
    return objective, plugin, [f"training.objective_options.chunk_tokens={int(chunk)}"] if chunk else []
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def runtime_floor_mb() -> float:
    proc = subprocess.run([sys.executable, "-c", FLOOR_SNIPPET], capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def train_args(model: Path, data: Path, out: Path, steps: int, batch: int, ckpt: bool, loss: str) -> list[str]:
    objective, plugin, sets = loss_choice(loss)
    return [*(["--plugin", str(plugin)] if plugin else []), "train", "--objective", objective,
            *(x for v in sets for x in ("--set", v)), "--model", str(model), "--data", str(data), "--out", str(out), "--strategy", "ddp",
            "--max-steps", str(steps), "--micro-batch-size", str(batch), "--set", "logging.progress=false",
            "--set", "strategy.precision=fp32", "--set", f"model.gradient_checkpointing={str(ckpt).lower()}",
            "--set", "checkpointing.save_every=0"]


def estimate_mb(model: Path, data: Path, steps: int, batch: int, ckpt: bool, loss: str) -> dict:
    """The dry run's estimate rows, in MiB (the same function ``--dry-run`` calls)."""
    from cptcore.config import load_config
    from cptcore.plugins import make_plugin_manager
    from cptcore.train.dryrun import plan_dry_run

    objective, plugin, sets = loss_choice(loss)
    cfg = load_config(overrides={
        "model.path": str(model), "data.train": [str(data)], "training.out_dir": "/nonexistent-dry",
        "training.max_steps": steps, "training.micro_batch_size": batch, "strategy.name": "ddp",
        "strategy.precision": "fp32", "training.objective": objective,
    }, sets=[f"model.gradient_checkpointing={str(ckpt).lower()}", *sets])
    dry = plan_dry_run(cfg, make_plugin_manager(entrypoints=False, files=[plugin] if plugin else ()), 1)
    rows = {label: value / 2**20 for label, value in dry.memory.rows()}
    rows["estimate"] = rows["total (checkpointing)"] if ckpt else rows["total"]
    rows["loss_chunk_tokens"] = dry.plan.loss_chunk_tokens
    return rows


def measure(model: Path, data: Path, out: Path, steps: int, batch: int, ckpt: bool, loss: str) -> dict:
    cpt = str(Path(sys.executable).parent / "cpt")
    proc = subprocess.Popen([cpt, *train_args(model, data, out, steps, batch, ckpt, loss)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"cpt train failed:\n{stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    peaks = [r["peak_memory_mb"] for r in records if "peak_memory_mb" in r]
    losses = [r["loss"] for r in records if "loss" in r]
    return {"train_peak_rss_mb": max(peaks), "per_step_peak_mb": peaks, "step_losses": losses}


def loss_difference(model: Path, data: Path, batch: int) -> dict:
    """Chunked (:func:`cptcore.train.losses.token_loss_sum`, default chunk) against the
    unchunked loss (``_unchunked_loss.unchunked``) on the model's fp32 logits for its
    first ``batch`` training rows: the loss sums and their gradients w.r.t. the logits."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM

    from _unchunked_loss import unchunked
    from cptcore.builtin_plugins.objective_causal_lm import causal_lm_loss

    ds = datasets.load_from_disk(str(data)).with_format("torch", columns=["input_ids", "labels", "position_ids"])
    rows = ds[:batch]
    net = AutoModelForCausalLM.from_pretrained(str(model), torch_dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():
        logits = net(input_ids=rows["input_ids"].long(), position_ids=rows["position_ids"].long()).logits
    del net
    labels = rows["labels"].long()
    out = {}
    for name, fn in (("chunked", causal_lm_loss), ("unchunked", unchunked)):
        x = logits.clone().requires_grad_()
        value, count = fn(x, {"labels": labels}, None)
        value.backward()
        out[name] = (value.item(), count, x.grad)
    (a, n, ga), (b, _, gb) = out["chunked"], out["unchunked"]
    return {"tokens": n, "loss_sum_chunked": a, "loss_sum_unchunked": b, "max_abs": abs(a - b),
            "max_rel": abs(a - b) / abs(b), "grad_max_abs": (ga - gb).abs().max().item(),
            "grad_max_abs_unchunked": gb.abs().max().item()}


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
    ap.add_argument("--loss", default="chunked,unchunked",
                    help="losses to run, of chunked (causal_lm, default chunk_tokens), chunked:N (chunk_tokens=N), unchunked")
    ap.add_argument("--name", default="memory", help="results file name (benchmarks/results/NAME.json)")
    ap.add_argument("--reuse-measured", type=Path, default=None, metavar="FILE",
                    help="take the measured figures from an earlier results FILE; only recompute the estimates")
    args = ap.parse_args()
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES] + [x for x in args.loss.split(",")
                                                       if x and x.partition(":")[0] not in LOSSES]
    if unknown:
        raise SystemExit(f"unknown shape(s) or loss(es) {unknown}; choose from {list(SHAPES)} / {list(LOSSES)}")
    ckpts = [{"off": False, "on": True}[c] for c in args.ckpt.split(",") if c]
    losses = [x for x in args.loss.split(",") if x]

    from _machine import print_table, write_result
    from train_overhead import prepare_data

    previous = json.loads(args.reuse_measured.read_text()) if args.reuse_measured else None
    floor = previous["runtime_floor_mb"] if previous else runtime_floor_mb()
    results, table, diffs = [], [], {}
    with tempfile.TemporaryDirectory(prefix="cpt-bench-memory-") as tmp:
        work = Path(tmp)
        for name in shapes:
            kind, batch, length = SHAPES[name]
            model = model_dir(kind, work)
            data = prepare_data(model, work / kind, length)
            if not previous:
                diffs[name] = loss_difference(model, data, batch)
                d = diffs[name]
                print(f"{name} loss sum over {d['tokens']} tokens: chunked {d['loss_sum_chunked']:.6f}, unchunked "
                      f"{d['loss_sum_unchunked']:.6f}: abs {d['max_abs']:.3g}, rel {d['max_rel']:.3g}; "
                      f"gradient max abs diff {d['grad_max_abs']:.3g}", flush=True)
            for ckpt in ckpts:
                for loss in losses:
                    est = estimate_mb(model, data, args.steps, batch, ckpt, loss)
                    if previous:
                        old = next(r for r in previous["runs"] if r["shape"] == name and r["gradient_checkpointing"] == ckpt
                                   and r.get("loss", "unchunked") == loss)
                        measured = {k: old[k] for k in ("train_peak_rss_mb", "per_step_peak_mb", "step_losses") if k in old}
                    else:
                        measured = measure(model, data, work / f"run-{name}-{ckpt}-{loss}", args.steps, batch, ckpt, loss)
                    ratio = (est["estimate"] + floor) / measured["train_peak_rss_mb"]
                    results.append({"shape": name, "gradient_checkpointing": ckpt, "loss": loss, "micro_batch": batch,
                                    "seq_len": length, "estimate_mb": est, **measured,
                                    "ratio_estimate_plus_floor_to_measured": ratio})
                    table.append([name, "on" if ckpt else "off", loss, est["estimate"] + floor,
                                  measured["train_peak_rss_mb"], ratio])
                    print(f"{name} ckpt={'on' if ckpt else 'off'} loss={loss}: estimate+floor "
                          f"{est['estimate'] + floor:,.0f} MiB, measured {measured['train_peak_rss_mb']:,.0f} MiB, "
                          f"ratio {ratio:.3f}", flush=True)
    print_table(f"memory: cpt train, fp32 AdamW, ddp 1 process, {args.steps} steps (MiB; runtime floor {floor:,.0f})",
                ["shape", "grad ckpt", "loss", "estimate + floor", "measured peak RSS", "ratio (target 0.85-1.15)"], table)
    versus = []
    for r in results:
        if r["loss"] == "unchunked":
            continue
        base = next((b for b in results if b["loss"] == "unchunked" and b["shape"] == r["shape"]
                     and b["gradient_checkpointing"] == r["gradient_checkpointing"]), None)
        if base is not None:
            steps = [abs(x - y) for x, y in zip(r.get("step_losses", []), base.get("step_losses", []))]
            versus.append({"shape": r["shape"], "loss": r["loss"], "gradient_checkpointing": r["gradient_checkpointing"],
                           "chunked_peak_mb": r["train_peak_rss_mb"], "unchunked_peak_mb": base["train_peak_rss_mb"],
                           "saved_mb": base["train_peak_rss_mb"] - r["train_peak_rss_mb"],
                           "ratio_chunked_to_unchunked": r["train_peak_rss_mb"] / base["train_peak_rss_mb"],
                           "logged_step_loss_max_abs_diff": max(steps) if steps else None})
    if versus:
        print_table("chunked causal_lm loss vs the unchunked baseline: peak RSS of the training run (MiB)",
                    ["shape", "loss", "grad ckpt", "chunked", "unchunked", "saved", "chunked / unchunked",
                     "logged loss max |diff|"],
                    [[v["shape"], v["loss"], "on" if v["gradient_checkpointing"] else "off", v["chunked_peak_mb"],
                      v["unchunked_peak_mb"], v["saved_mb"], v["ratio_chunked_to_unchunked"],
                      v["logged_step_loss_max_abs_diff"]] for v in versus])
    out = write_result(args.name, {"settings": vars(args) | {"reuse_measured": str(args.reuse_measured or "")},
                                   "runtime_floor_mb": floor, "runs": results, "chunked_vs_unchunked": versus,
                                   "loss_difference_fp32": diffs or (previous or {}).get("loss_difference_fp32", {}),
                                   "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS")})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
