"""Step time and peak memory per rank of every built-in strategy, against ``ddp``.

Every strategy trains the same random-init LLaMA on the same synthetic global batch
(``--rows`` rows of ``--seq`` tokens per optimizer step, split over the data-parallel
ranks) under ``torchrun`` with ``--nproc`` ranks, driven by the same
:class:`~cptcore.train.trainer.Trainer` as ``cpt train`` (``precheck`` -> ``setup`` ->
``train_step``: ``strategy.wrap`` -> ``forward_backward`` -> ``clip_and_step``). Each run does ``--steps`` optimizer steps;
the first ``--skip`` are warm-up; the figure is the median of the rest, each step timed
between two barriers on rank 0.

Memory per rank:
* CPU: peak RSS of each rank (``ru_maxrss``) and its growth over the RSS measured just
  before the model is built (the runtime floor: Python, torch, ColossalAI), max over ranks;
* GPU: ``torch.cuda.max_memory_allocated``, max over ranks; plus tokens/s and MFU
  (model FLOPs utilisation: ``6 · N · tokens/s`` over the GPU's dense bf16 peak,
  Kaplan et al. 2020 / Chowdhery et al. 2022 appendix B; attention FLOPs ignored).

Run: ``.venv/bin/python benchmarks/strategies.py [--only zero2,gemini] [--steps N]``
Writes ``benchmarks/results/strategies.json`` (CPU) or ``strategies_gpu.json``.
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
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

MODEL = dict(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False)
BF16 = "strategy.precision=bf16"
RUNS = {
    "ddp": ["ddp"],
    "ddp_bf16": ["ddp", BF16],
    "zero1": ["zero1", BF16],
    "zero2": ["zero2", BF16],
    "zero2_cpu": ["zero2_cpu", BF16],
    "gemini": ["gemini", BF16],
    "hybrid3d_tp2": ["hybrid3d", "strategy.tp_size=2", BF16],
    "hybrid3d_pp2": ["hybrid3d", "strategy.pp_size=2", "strategy.num_microbatches=2", BF16],
    "fsdp": ["fsdp"],
    "fsdp_bf16": ["fsdp", BF16],
}
#: dense bf16 peak FLOP/s by GPU name fragment (vendor data sheets)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "V100": 125e12}


def worker(args: argparse.Namespace) -> None:
    """One strategy under torchrun; rank 0 writes ``args.out``."""
    import resource

    import torch
    import torch.distributed as dist

    from transformers import LlamaForCausalLM

    from cptcore.config import load_config
    from cptcore.plugins import make_plugin_manager
    from cptcore.train.launch import init_distributed
    from cptcore.train.plan import precheck
    from cptcore.train.trainer import Trainer

    name, *sets = args.run
    overrides = {"strategy.name": name, "model.path": args.model, "training.out_dir": str(Path(args.out).parent),
                 "training.max_steps": args.steps, "training.micro_batch_size": args.rows, "training.seed": 0,
                 "checkpointing.resume": "auto"}
    config = load_config(None, overrides=overrides, sets=sets)
    rank, world = init_distributed(0)
    on_gpu = torch.cuda.is_available()
    rss_floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    class BenchTrainer(Trainer):
        def build_model(self):
            model = LlamaForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
            return model.cuda() if on_gpu else model

    pm = make_plugin_manager(entrypoints=False)
    trainer = BenchTrainer(precheck(config, pm, world, need_data=False), pm).setup()
    strategy = trainer.strategy
    n_params = sum(p.numel() for p in trainer.hf_model.parameters())
    dp_rows = args.rows // strategy.dp_size
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.steps):
        g = torch.Generator().manual_seed(step)
        ids = torch.randint(0, MODEL["vocab_size"], (args.rows, args.seq), generator=g)
        rows = slice(strategy.dp_rank * dp_rows, (strategy.dp_rank + 1) * dp_rows)
        batch = {"input_ids": ids[rows], "labels": ids[rows], "position_ids": torch.arange(args.seq).repeat(dp_rows, 1)}
        dist.barrier()
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train_step([batch])
        if on_gpu:
            torch.cuda.synchronize()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mine = {"rss_peak": rss, "rss_growth": rss - rss_floor,
            "cuda_peak": torch.cuda.max_memory_allocated() if on_gpu else None}
    every = [None] * world
    dist.all_gather_object(every, mine)
    if rank == 0:
        timed = times[args.skip:]
        step_s = statistics.median(timed)
        tokens = args.rows * args.seq
        result = {"step_s": step_s, "steps_timed": len(timed), "tokens_per_s": tokens / step_s, "params": n_params,
                  "dp": strategy.dp_size, "rss_peak_max": max(r["rss_peak"] for r in every),
                  "rss_growth_max": max(r["rss_growth"] for r in every)}
        if on_gpu:
            result["cuda_peak_max"] = max(r["cuda_peak"] for r in every)
            gpu = torch.cuda.get_device_name(0)
            peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
            if peak:
                result["mfu"] = 6 * n_params * result["tokens_per_s"] / (peak * world)
        Path(args.out).write_text(json.dumps(result))
    dist.barrier()
    del trainer, strategy
    dist.destroy_process_group()


def launch(run: list[str], model: Path, out: Path, args: argparse.Namespace) -> dict | None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
           str(Path(__file__).resolve()), "--worker", "--model", str(model), "--out", str(out),
           "--steps", str(args.steps), "--skip", str(args.skip), "--rows", str(args.rows), "--seq", str(args.seq),
           "--bench-run", *run]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{' '.join(run)}: failed\n" + "\n".join((proc.stdout + proc.stderr).splitlines()[-15:]), file=sys.stderr)
        return None
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(RUNS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--skip", type=int, default=3)
    parser.add_argument("--rows", type=int, default=4, help="global batch rows per step")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--bench-run", dest="run", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import torch

    from _machine import print_table, write_result
    from cptcore.testing import make_tiny_llama

    names = [n for n in (args.only.split(",") if args.only else RUNS) if n]
    if "ddp" not in names:
        names.insert(0, "ddp")
    results: dict[str, dict | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_llama(Path(tmp) / "model", **MODEL)
        for name in names:
            t0 = time.time()
            results[name] = launch(RUNS[name], model, Path(tmp) / f"{name}.json", args)
            print(f"{name}: {time.time() - t0:.0f} s wall", file=sys.stderr)
    base = results.get("ddp")
    on_gpu = torch.cuda.is_available()
    mem_key = "cuda_peak_max" if on_gpu else "rss_growth_max"
    rows = []
    for name, r in results.items():
        if r is None or base is None:
            rows.append([name, "failed", "", "", "", ""])
            continue
        r["step_ratio_vs_ddp"] = r["step_s"] / base["step_s"]
        r["memory_ratio_vs_ddp"] = r[mem_key] / base[mem_key]
        extra = f"{r['mfu']:.3f}" if on_gpu and "mfu" in r else f"{r['rss_peak_max'] / 2**20:,.0f}"
        rows.append([name, r["step_s"] * 1000, r["step_ratio_vs_ddp"], r[mem_key] / 2**20, r["memory_ratio_vs_ddp"],
                     extra])
    last = "MFU" if on_gpu else "peak RSS MiB"
    print_table(f"strategies, {args.nproc} ranks, {args.rows}x{args.seq} tokens/step",
                ["strategy", "step ms", "x ddp", "peak MiB" if on_gpu else "RSS growth MiB", "x ddp", last], rows)
    settings = {"model": MODEL, "nproc": args.nproc, "rows": args.rows, "seq": args.seq, "steps": args.steps,
                "skip": args.skip, "memory_metric": mem_key, "runs": {n: RUNS[n] for n in names}}
    path = write_result("strategies_gpu" if on_gpu else "strategies", {"settings": settings, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
