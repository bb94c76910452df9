"""torchrun worker for tests/test_strategies_*.py: drives one strategy through the
library (build_strategy -> make_optimizer -> boost -> forward_backward/clip_and_step ->
save/load -> unwrap) on a tiny LLaMA and writes what it saw as JSON.

    torchrun --nproc_per_node 2 tests/_strategy_worker.py MODEL_DIR OUT_JSON STRATEGY [k=v ...]

Data: a deterministic global batch of ``GLOBAL_ROWS`` rows per micro-step (seeded by
step and micro-step); each data-parallel rank takes its slice, so every strategy sees
the same global batch whatever its dp size. Run: STEPS optimizer steps of ACCUM
micro-batches, checkpoint after SAVE_AT steps and measure a fixed probe batch's loss
right after saving; then fresh model/optimizer/strategy objects load the checkpoint,
re-measure the probe loss and replay the remaining steps.
"""

from __future__ import annotations

import json
import os
import sys

GLOBAL_ROWS, SEQ, STEPS, SAVE_AT, VOCAB = 4, 32, 4, 2, 128
ACCUM = int(os.environ.get("CPT_TEST_ACCUM", "2"))


def batch_for(step: int, micro: int, vocab: int, dp_size: int, dp_rank: int):
    import torch

    g = torch.Generator().manual_seed(1000 * step + micro)
    ids = torch.randint(3, vocab, (GLOBAL_ROWS, SEQ), generator=g)
    labels = ids.clone()
    labels[:, : 1 + micro] = -100  # uneven label counts per micro-batch: token weighting matters
    pos = torch.arange(SEQ).repeat(GLOBAL_ROWS, 1)
    rows = slice(dp_rank, None, dp_size)
    return {"input_ids": ids[rows], "labels": labels[rows], "position_ids": pos[rows]}


def main() -> None:
    import torch
    import torch.distributed as dist
    from transformers import LlamaForCausalLM

    from cptcore.config import load_config
    from cptcore.plugins import make_plugin_manager
    from cptcore.train import build
    from cptcore.train.launch import init_distributed
    from cptcore.train.optim import param_groups, scheduler_factory, strip_names
    from cptcore.train.strategy import count_label_tokens, token_loss_sum

    model_dir, out_json, name, *sets = sys.argv[1:]
    out_dir = os.path.dirname(out_json)
    overrides = {"strategy.name": name, "model.path": model_dir, "training.out_dir": out_dir,
                 "training.max_steps": STEPS, "optimizer.lr": 1e-2, "schedule.warmup_steps": 1,
                 "training.accumulation_steps": ACCUM}
    config = load_config(None, overrides=overrides, sets=sets)
    rank, world = init_distributed(0)
    pm = make_plugin_manager(entrypoints=False)

    def fresh():
        strategy = build.build_strategy(config, pm)
        torch.manual_seed(0)
        model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
        build.apply_freeze(model, config.training.freeze)
        if config.lora.enabled:
            from cptcore.builtin_plugins.lora import add_lora

            model = add_lora(model, config.lora)
        opt = strategy.make_optimizer(strip_names(param_groups(model, config.optimizer.weight_decay)), config.optimizer)
        model, opt, sched, _ = strategy.boost(model, opt, scheduler_factory(config.schedule, STEPS))
        model.train()
        return strategy, model, opt, sched

    def reduce(values, group):
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=group)
        return t.tolist()

    def run_step(strategy, model, opt, sched, step):
        batches = [batch_for(step, i, VOCAB, strategy.dp_size, strategy.dp_rank) for i in range(ACCUM)]
        (n,) = reduce([float(sum(count_label_tokens(b["labels"]) for b in batches))], strategy.dp_group)
        loss = 0.0
        for i, b in enumerate(batches):
            loss += float(strategy.forward_backward(model, opt, b, strategy.dp_size / n, sync=i == ACCUM - 1))
        norm = strategy.clip_and_step(opt, config.optimizer.grad_clip)
        sched.step()
        opt.zero_grad()
        (total,) = reduce([loss], strategy.dp_group)
        return total / n, norm

    def probe(strategy, model):
        b = batch_for(99, 0, VOCAB, strategy.dp_size, strategy.dp_rank)
        model.eval()
        with torch.no_grad():
            s = float(token_loss_sum(strategy.forward(model, b), b["labels"]))
        model.train()
        c = count_label_tokens(b["labels"])
        total, count = reduce([s, float(c)], strategy.dp_group)
        return total / count

    strategy, model, opt, sched = fresh()
    result = {"strategy": name, "dp": strategy.dp_size, "losses": [], "norms": [], "lrs": []}
    ckpt = os.path.join(out_dir, "ckpt")
    for step in range(STEPS):
        result["lrs"].append(sched.get_last_lr()[0])
        loss, norm = run_step(strategy, model, opt, sched, step)
        result["losses"].append(loss)
        result["norms"].append(norm)
        if step + 1 == SAVE_AT:
            strategy.save(ckpt, model, opt, sched)
            dist.barrier()
            result["probe_at_save"] = probe(strategy, model)
    full = strategy.unwrap(model)
    result["export_probe"] = None
    if rank == 0:
        b = batch_for(99, 0, VOCAB, 1, 0)
        with torch.no_grad():
            logits = full.float()(input_ids=b["input_ids"], position_ids=b["position_ids"]).logits
        result["export_probe"] = float(token_loss_sum(logits, b["labels"])) / count_label_tokens(b["labels"])
    result["probe_final"] = probe(strategy, model)
    dist.barrier()

    strategy, model, opt, sched = fresh()
    strategy.load(ckpt, model, opt, sched)
    result["probe_after_load"] = probe(strategy, model)
    result["resumed_lr"] = sched.get_last_lr()[0]
    result["resumed_losses"] = [run_step(strategy, model, opt, sched, s)[0] for s in range(SAVE_AT, STEPS)]
    if rank == 0:
        with open(out_json, "w") as fh:
            json.dump(result, fh, indent=1)
    dist.barrier()
    del model, opt, strategy
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
