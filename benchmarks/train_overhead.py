"""Train-loop overhead: step time of ``cpt train`` (strategy ddp, one process) against a
bare PyTorch loop on the same model, batch, data and optimizer. Target: ratio <= 1.03.

Both sides run in fresh subprocesses with the same environment, alternating
(bare, cpt, bare, cpt, ...) so that load from other work on the machine hits both alike.
Each side does ``--steps`` optimizer steps; the first ``--skip`` are warm-up and not
timed; the figure is the median step time of the rest.

* **bare**: ``AutoModelForCausalLM`` (fp32, SDPA), rows of the same prepared Arrow folder
  in a seeded random order, the same block-diagonal causal mask over packed documents,
  summed token cross-entropy / token count, ``backward``, ``clip_grad_norm_(1.0)``,
  ``torch.optim.AdamW`` (foreach=False, no decay on 1-D parameters), ``LambdaLR``
  cosine schedule, ``zero_grad``. Step time: ``time.perf_counter`` around each step.
* **cpt**: ``cpt train --strategy ddp`` with the same settings (default loggers: JSONL and
  TensorBoard, progress bar off). Step time: differences of the ``time`` stamps of
  consecutive steps in ``logs/metrics.jsonl`` (so it includes logging and everything
  else the loop does per step).

Run: ``.venv/bin/python benchmarks/train_overhead.py [--model small|smollm2] [--steps N]``
Writes ``benchmarks/results/train_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODELS = {
    # a random-init LLaMA with SmolLM2's tokenizer (vocab 49152): ~46 M parameters
    "small": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2),
}


def make_model(kind: str, work: Path) -> Path:
    from cptcore.assets import smollm2_hf_dir

    base = smollm2_hf_dir()
    if kind == "smollm2":
        return base
    from cptcore.testing import make_tiny_llama

    return make_tiny_llama(work / f"model-{kind}", base, **MODELS[kind])


def prepare_data(model_dir: Path, work: Path, length: int) -> Path:
    from cptcore.assets import bundled
    from cptcore.data.pipeline import PrepareArgs, prepare
    from cptcore.plugins import make_plugin_manager

    out = work / f"data-{length}"
    if not (out / "manifest.json").is_file():
        prepare(make_plugin_manager(entrypoints=False), PrepareArgs(
            kind="pretrain", tokenizer=str(model_dir), inputs=(str(bundled("zh_law_train.jsonl")),),
            out=str(out), max_length=length, packer="splice"))
    return out


# ----------------------------------------------------------------------------- bare side
def bare_loop(model_dir: str, data_dir: str, steps: int, batch: int, lr: float, seed: int) -> list[float]:
    """The baseline loop; returns every step's seconds."""
    import math

    import datasets
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    ds = datasets.load_from_disk(data_dir).with_format("numpy", columns=["input_ids", "labels", "position_ids"])
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=False,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        rows = [ds[i] for i in order[step * batch:(step + 1) * batch]]
        ids = torch.as_tensor([r["input_ids"] for r in rows], dtype=torch.long)
        labels = torch.as_tensor([r["labels"] for r in rows], dtype=torch.long)
        pos = torch.as_tensor([r["position_ids"] for r in rows], dtype=torch.long)
        doc = torch.cumsum((pos == 0).long(), dim=1)
        allowed = (doc[:, :, None] == doc[:, None, :]) & torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
        mask = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)[:, None]
        logits = model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).logits
        shift = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), shift.reshape(-1), ignore_index=-100, reduction="sum")
        (loss / (shift != -100).sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=False)
        opt.step()
        sched.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------------------ cpt side
def cpt_run(model_dir: Path, data_dir: Path, out: Path, steps: int, batch: int, lr: float, seed: int,
            sets: list[str] = ()) -> tuple[list[float], list[float], float | None]:
    """``cpt train`` in a subprocess; returns the step times and per-step MFU from
    metrics.jsonl, and the run's MFU from summary.json (cptcore.train.mfu)."""
    cmd = [str(Path(sys.executable).parent / "cpt"), "train", "--model", str(model_dir), "--data", str(data_dir),
           "--out", str(out), "--strategy", "ddp", "--max-steps", str(steps), "--micro-batch-size", str(batch),
           "--lr", str(lr), "--seed", str(seed), "--set", "logging.progress=false",
           *[x for item in sets for x in ("--set", item)]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cpt train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    stamps = [r["time"] for r in rows]
    summary = json.loads((out / "summary.json").read_text())
    return [b - a for a, b in zip(stamps, stamps[1:])], [r.get("mfu", 0.0) for r in rows], summary.get("mfu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["small", "smollm2"], default="small")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps not timed")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2, help="bare/cpt pairs, alternating")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS of both sides (1 keeps a shared machine's noise down; 0 = leave unset)")
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                    help="extra cpt train --set item (e.g. strategy.gradient_as_bucket_view=true)")
    ap.add_argument("--name", default="train_overhead", help="results file name")
    ap.add_argument("--bare-child", nargs=2, metavar=("MODEL", "DATA"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.bare_child:  # subprocess entry for the bare side
        times = bare_loop(args.bare_child[0], args.bare_child[1], args.steps, args.batch, args.lr, 42)
        print(json.dumps(times))
        return

    from _machine import print_table, write_result

    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by both subprocesses

    with tempfile.TemporaryDirectory(prefix="cpt-bench-overhead-") as tmp:
        work = Path(tmp)
        model_dir = make_model(args.model, work)
        data_dir = prepare_data(model_dir, work, args.length)
        bare_all, cpt_all, mfu_all, run_mfu = [], [], [], []
        for r in range(args.rounds):
            proc = subprocess.run(
                [sys.executable, __file__, "--bare-child", str(model_dir), str(data_dir), "--steps", str(args.steps),
                 "--batch", str(args.batch), "--lr", str(args.lr)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"bare loop failed:\n{proc.stderr[-3000:]}")
            bare = json.loads(proc.stdout.strip().splitlines()[-1])[args.skip:]
            # metrics stamps give steps-1 differences: difference i is step i+2's time
            cpt, mfus, mfu_run = cpt_run(model_dir, data_dir, work / f"run-{r}", args.steps, args.batch, args.lr,
                                         42, args.sets)
            cpt = cpt[args.skip - 1:]
            mfu_all += mfus[args.skip:]
            run_mfu.append(mfu_run)
            bare_all += bare
            cpt_all += cpt
            print(f"round {r + 1}: bare median {statistics.median(bare):.3f} s, cpt median {statistics.median(cpt):.3f} s",
                  flush=True)

    bare_med, cpt_med = statistics.median(bare_all), statistics.median(cpt_all)
    ratio = cpt_med / bare_med
    tokens = args.batch * args.length
    rows = [
        ["bare PyTorch loop", bare_med, min(bare_all), tokens / bare_med, 1.0],
        ["cpt train (ddp, 1 process)", cpt_med, min(cpt_all), tokens / cpt_med, ratio],
    ]
    print_table(f"train-loop overhead: {args.model}, batch {args.batch} x {args.length} tokens, "
                f"{args.rounds} x {args.steps - args.skip} timed steps per side",
                ["loop", "median s/step", "min s/step", "tokens/s", "ratio to bare"], rows)
    verdict = "meets" if ratio <= 1.03 else "misses"
    print(f"cpt/bare step-time ratio {ratio:.3f} ({verdict} the <= 1.03 target)")
    mfu_med = statistics.median(mfu_all) if mfu_all else 0.0
    # same model FLOPs per step on both sides: the bare loop's MFU follows from the time ratio
    print(f"MFU (cpt train, per step, median of timed steps): {mfu_med:.2%}; bare loop at the same FLOPs: "
          f"{mfu_med * ratio:.2%}; summary.json mfu per run: {', '.join(f'{m:.2%}' for m in run_mfu if m is not None)}")
    out = write_result(args.name, {
        "settings": vars(args) | {"bare_child": None},
        "bare_step_seconds": bare_all, "cpt_step_seconds": cpt_all,
        "bare_median_s": bare_med, "cpt_median_s": cpt_med, "ratio": ratio, "target": 1.03,
        "cpt_mfu_median": mfu_med, "bare_mfu": mfu_med * ratio, "summary_mfu": run_mfu,
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
