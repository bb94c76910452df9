"""A custom training loop on cptcore's building blocks (model, data, strategy, noise).

    python examples/custom_trainer.py run.yaml [--set training.max_steps=5 ...]

Builds everything from a run config and the plugin manager, then runs its own plain loop
with token-weighted gradient accumulation. Prints one loss per optimizer step.
"""

import sys

import torch

from cptcore import make_plugin_manager
from cptcore.config import load_config
from cptcore.model.load import load_tokenizer
from cptcore.train import build
from cptcore.train.data import Loader, block_causal_mask
from cptcore.train.launch import init_distributed
from cptcore.train.optim import param_groups, scheduler_factory, strip_names
from cptcore.train.strategy import count_label_tokens


def main(argv):
    sets = [a for a in argv[1:] if a != "--set"]
    cfg = load_config(argv[0], sets=sets)
    pm = make_plugin_manager()
    init_distributed(cfg.training.seed)
    strategy = build.build_strategy(cfg, pm)  # a Strategy around a ColossalAI Booster
    tokenizer = load_tokenizer(cfg.model)
    data, sampler, manifests = build.build_data(cfg, tokenizer, strategy.dp_size, strategy.dp_rank)
    torch.manual_seed(cfg.training.seed)
    model = build.build_model(cfg, pm)  # cpt_build_model (+ LoRA wrapper, freeze policy)
    hf_model = model
    build.attach_noise(cfg, pm, model)  # e.g. NEFTune when noise.name is set
    opt = strategy.make_optimizer(strip_names(param_groups(model, cfg.optimizer.weight_decay)), cfg.optimizer)
    model, opt, sched, _ = strategy.boost(model, opt, scheduler_factory(cfg.schedule, cfg.training.max_steps))
    loader = Loader(data, sampler, manifests[0]["pad_id"], block_mask=False)
    accum = cfg.training.accumulation_steps
    model.train()
    for step in range(1, cfg.training.max_steps + 1):
        batches = [loader.next()[0] for _ in range(accum)]
        n = sum(count_label_tokens(b["labels"]) for b in batches)  # one rank: no all_reduce needed
        total = 0.0
        for i, b in enumerate(batches):
            b["attention_mask"] = block_causal_mask(b["position_ids"], torch.float32)
            hf_model.cpt_real_lengths = b["lengths"]
            total += float(strategy.forward_backward(model, opt, b, strategy.dp_size / n, sync=i == accum - 1))
        strategy.clip_and_step(opt, cfg.optimizer.grad_clip)
        sched.step()
        opt.zero_grad()
        print(f"step {step} loss {total / n:.4f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
