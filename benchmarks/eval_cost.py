"""What evaluation costs relative to training, scaled to the issue's defaults.

The target (issue 13): evaluating two eval sets of 20k tokens every 100 optimizer steps
of 2 x 2048 tokens costs <= 10 % of the training wall time. A CPU cannot run that setup
in minutes, so this script measures the two per-token costs on the same model, rows
and machine, and scales them:

* **train**: the seconds per token of a training step as ``cpt train`` does it: forward
  on a micro-batch of ``--batch`` rows of ``--length`` tokens (block-causal mask from
  ``collate``), summed token loss, ``backward``, ``clip_grad_norm_``, AdamW step,
  ``zero_grad``; median over ``--steps`` steps after one warm-up step.
* **eval**: :func:`cptcore.eval.prepared.evaluate_prepared` (what ``cpt train`` runs per
  named set) over two prepared eval sets (held-out Chinese law, English Python docs),
  ``--eval-tokens`` tokens each, the same micro-batch; seconds per scored token.

``ratio = (2 sets * 20,000 tokens * eval s/token) / (100 steps * 4,096 tokens * train
s/token)``, the fraction of training time the default evaluation schedule adds. (The
per-token costs are measured at ``--length``; at 2048 tokens attention is a larger
share of both sides alike.)

Run: ``.venv/bin/python benchmarks/eval_cost.py [--model small|tiny] [--length 256]``
Writes ``benchmarks/results/eval_cost.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODELS = {
    "small": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2),
    "tiny": dict(),
}
SETS, SET_TOKENS, EVERY, STEP_TOKENS = 2, 20_000, 100, 2 * 2048


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="small")
    ap.add_argument("--length", type=int, default=256, help="tokens per row")
    ap.add_argument("--batch", type=int, default=2, help="rows per micro-batch")
    ap.add_argument("--steps", type=int, default=6, help="timed training steps")
    ap.add_argument("--eval-tokens", type=int, default=4096, help="tokens per eval set measured")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from _machine import print_table, write_result
    from cptcore.assets import bundled, smollm2_hf_dir
    from cptcore.data.pipeline import PrepareArgs, prepare
    from cptcore.eval.prepared import evaluate_prepared
    from cptcore.plugins import make_plugin_manager
    from cptcore.testing import make_tiny_llama
    from cptcore.train.data import collate, open_dataset
    from cptcore.train.strategy import count_label_tokens, token_loss_sum

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="cpt-evalcost-"))
    model_dir = make_tiny_llama(work / "model", smollm2_hf_dir(), **MODELS[args.model])
    pm = make_plugin_manager(entrypoints=False)
    docs = Path(__file__).resolve().parents[1] / "tests" / "data" / "en_python_docs_sample.jsonl"
    folders = {}
    for name, src in (("train", bundled("zh_law_train.jsonl")), ("law", bundled("zh_law_heldout.jsonl")), ("docs", docs)):
        folders[name] = work / name
        prepare(pm, PrepareArgs(kind="pretrain", tokenizer=str(model_dir), inputs=(str(src),), out=str(folders[name]),
                                max_length=args.length))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="sdpa")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
    ds = open_dataset(folders["train"])
    pad = 0
    times, tokens = [], []
    model.train()
    for step in range(args.steps + 1):
        rows = [ds[(step * args.batch + i) % len(ds)] for i in range(args.batch)]
        batch = collate(rows, pad, block_mask=True)
        t0 = time.perf_counter()
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=batch["attention_mask"], use_cache=False).logits
        n = count_label_tokens(batch["labels"])
        (token_loss_sum(logits, batch["labels"]) / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step:  # the first step is warm-up
            times.append(time.perf_counter() - t0)
            tokens.append(int(batch["lengths"].sum()))
    train_s_per_token = statistics.median(t / n for t, n in zip(times, tokens))
    model.eval()
    eval_s, eval_tokens = 0.0, 0
    limit = max(1, args.eval_tokens // (args.batch * (args.length - 1)))
    per_set = {}
    for name in ("law", "docs"):
        t0 = time.perf_counter()
        r = evaluate_prepared(model, folders[name], micro_batch_size=args.batch, pad_id=pad, limit=limit)
        dt = time.perf_counter() - t0
        eval_s += dt
        eval_tokens += r.tokens
        per_set[name] = {"tokens": r.tokens, "seconds": round(dt, 3), "bpb": r.bpb}
    eval_s_per_token = eval_s / eval_tokens
    ratio = (SETS * SET_TOKENS * eval_s_per_token) / (EVERY * STEP_TOKENS * train_s_per_token)
    rows = [["train step (ms/token)", 1000 * train_s_per_token], ["evaluate_prepared (ms/token)", 1000 * eval_s_per_token],
            ["eval/train cost per token", eval_s_per_token / train_s_per_token],
            [f"eval share at defaults ({SETS}x{SET_TOKENS:,} tok every {EVERY} steps of {STEP_TOKENS:,})", ratio]]
    print_table(f"evaluation cost, model {args.model}, rows of {args.length}", ["", "value"], rows)
    out = write_result("eval_cost", {
        "model": args.model, "length": args.length, "batch": args.batch, "train_steps_timed": args.steps,
        "train_seconds_per_token": train_s_per_token, "eval_seconds_per_token": eval_s_per_token,
        "eval_to_train_per_token": eval_s_per_token / train_s_per_token, "eval_sets": per_set,
        "defaults": {"sets": SETS, "set_tokens": SET_TOKENS, "eval_every": EVERY, "step_tokens": STEP_TOKENS},
        "ratio_eval_to_train_time": ratio, "target": 0.10,
    })
    print(f"ratio {ratio:.4f} (target <= 0.10); wrote {out}")


if __name__ == "__main__":
    main()
