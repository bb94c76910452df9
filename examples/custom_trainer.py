"""A custom training loop on cptcore's Trainer: its parts, your loop.

    python examples/custom_trainer.py run.yaml [--set training.max_steps=5 ...]

``precheck`` validates the config once and returns the plan; ``Trainer.setup()`` builds
strategy, data, model, noise, optimizer and scheduler from it (and resumes with
``--set checkpointing.resume=auto``). The loop below replaces ``Trainer.fit()``: one
line per optimizer step, an extra early stop, evaluation every 10 steps, a checkpoint
and an export at the end. ``train_step`` is the same step ``cpt train`` runs.
"""

import sys

from cptcore import make_plugin_manager
from cptcore.config import load_config
from cptcore.train.launch import init_distributed
from cptcore.train.plan import precheck
from cptcore.train.trainer import Trainer


class LoudTrainer(Trainer):
    def train_step(self, batches):  # an override: wrap the one step with your own logic
        metrics = super().train_step(batches)
        if metrics.grad_norm > 100:
            print(f"  large gradient norm {metrics.grad_norm:.1f} at step {self.state.step}", flush=True)
        return metrics


def main(argv):
    config = load_config(argv[0], sets=[a for a in argv[1:] if a != "--set"])
    pm = make_plugin_manager()
    plan = precheck(config, pm)  # every check, once; raises a one-line CptError
    init_distributed(config.training.seed)
    trainer = LoudTrainer(plan, pm).setup()
    while trainer.state.step < config.training.max_steps:
        batches, _ = trainer.next_batches()
        m = trainer.train_step(batches)
        print(f"step {trainer.state.step} lr {m.lr:.2e} tokens {m.tokens} loss {m.loss:.4f}", flush=True)
        if trainer.state.step % 10 == 0 and trainer.eval_sets:
            print(f"  eval {trainer.evaluate()}", flush=True)
        if m.loss < 0.05:  # a stop rule of your own
            break
    trainer.save_checkpoint()
    print(f"exported to {trainer.export()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
