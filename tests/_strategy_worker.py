"""torchrun worker for tests/test_strategies_*.py: drives one strategy through the
:class:`~cptcore.train.trainer.Trainer` (precheck -> setup -> train_step ->
save_checkpoint / load_checkpoint -> evaluate -> unwrapped) on a tiny LLaMA and writes
what it saw as JSON.

    torchrun --nproc_per_node 2 tests/_strategy_worker.py MODEL_DIR OUT_JSON STRATEGY [k=v ...]

Data: a deterministic global batch of ``GLOBAL_ROWS`` rows per micro-step (seeded by
step and micro-step); each data-parallel rank takes its slice, so every strategy sees
the same global batch whatever its dp size. Run: STEPS optimizer steps of ACCUM
micro-batches, checkpoint after SAVE_AT steps and measure a fixed probe batch's loss
right after saving; then a fresh Trainer (model, optimizer, strategy) loads the
checkpoint, re-measures the probe loss and replays the remaining steps.
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

    from cptcore.builtin_plugins.lora import add_lora
    from cptcore.config import load_config
    from cptcore.plugins import make_plugin_manager
    from cptcore.train.build import apply_freeze
    from cptcore.train.launch import init_distributed
    from cptcore.train.plan import precheck
    from cptcore.train.strategy import count_label_tokens, token_loss_sum
    from cptcore.train.trainer import Trainer

    model_dir, out_json, name, *sets = sys.argv[1:]
    out_dir = os.path.dirname(out_json)
    overrides = {"strategy.name": name, "model.path": model_dir, "training.out_dir": out_dir,
                 "training.max_steps": STEPS, "optimizer.lr": 1e-2, "schedule.warmup_steps": 1,
                 "training.accumulation_steps": ACCUM, "training.seed": 0, "checkpointing.resume": "auto"}
    config = load_config(None, overrides=overrides, sets=sets)
    rank, world = init_distributed(0)
    pm = make_plugin_manager(entrypoints=False, files=os.environ.get("CPT_TEST_PLUGINS", "").split())

    class WorkerTrainer(Trainer):
        """The model straight from the folder (no cpt_build_model), fp32."""

        def build_model(self):
            model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
            apply_freeze(model, config.training.freeze)
            return add_lora(model, config.lora) if config.lora.enabled else model

    def fresh():
        trainer = WorkerTrainer(precheck(config, pm, world, need_data=False), pm).setup()
        trainer.eval_sets = {"probe": lambda: [batch_for(99, 0, VOCAB, trainer.strategy.dp_size, trainer.strategy.dp_rank)]}
        return trainer

    def run_step(trainer, step):
        s = trainer.strategy
        m = trainer.train_step([batch_for(step, i, VOCAB, s.dp_size, s.dp_rank) for i in range(ACCUM)])
        return m.loss, m.grad_norm, m.lr

    def probe(trainer):
        return trainer.evaluate()["eval_loss"]

    trainer = fresh()
    result = {"strategy": name, "dp": trainer.strategy.dp_size, "losses": [], "norms": [], "lrs": []}
    for step in range(STEPS):
        loss, norm, lr = run_step(trainer, step)
        result["losses"].append(loss)
        result["norms"].append(norm)
        result["lrs"].append(lr)
        if step + 1 == SAVE_AT:
            ckpt = trainer.save_checkpoint()
            result["probe_at_save"] = probe(trainer)
    full = trainer.unwrapped()
    result["export_probe"] = None
    if rank == 0:
        b = batch_for(99, 0, VOCAB, 1, 0)
        with torch.no_grad():
            logits = full.float()(input_ids=b["input_ids"], position_ids=b["position_ids"]).logits
        result["export_probe"] = float(token_loss_sum(logits, b["labels"])) / count_label_tokens(b["labels"])
        if config.lora.enabled:  # base weights untouched, adapters trained, the merged export computes the same
            base = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).state_dict()
            state = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in full.state_dict().items()}
            # compared at bf16: bf16 strategies cast the frozen base once (rounding, not training)
            result["base_unchanged"] = all(torch.equal(state[k].bfloat16(), v.bfloat16()) for k, v in base.items()
                                           if k in state)
            result["base_compared"] = sum(k in state for k in base)
            result["adapter_changed"] = all(bool(v.abs().sum() > 0) for k, v in state.items() if "lora_B" in k)
            merged = full.float().merge_and_unload()
            with torch.no_grad():
                logits = merged(input_ids=b["input_ids"], position_ids=b["position_ids"]).logits
            result["merged_probe"] = float(token_loss_sum(logits, b["labels"])) / count_label_tokens(b["labels"])
    result["probe_final"] = probe(trainer)
    dist.barrier()

    trainer = fresh()  # checkpointing.resume=auto: setup() loads OUT/checkpoints/step-SAVE_AT
    assert trainer.state.step == SAVE_AT and trainer.plan.resume == ckpt, (trainer.state.step, trainer.plan.resume)
    result["probe_after_load"] = probe(trainer)
    result["resumed_lr"] = trainer.scheduler.get_last_lr()[0]
    result["resumed_losses"] = [run_step(trainer, s)[0] for s in range(SAVE_AT, STEPS)]
    if rank == 0:
        with open(out_json, "w") as fh:
            json.dump(result, fh, indent=1)
    dist.barrier()
    del trainer
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
