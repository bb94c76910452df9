"""A plugin file for tests: a plain-torch strategy implementing only the documented
Strategy protocol (no ColossalAI) and a label-smoothing objective (tests/test_engine.py)."""
from dataclasses import dataclass
from pathlib import Path

from cptcore import ObjectiveSpec, StrategySpec, hookimpl


class PlainStrategy:
    name = "plain"
    dp_group = None

    def __init__(self, precision):
        self.precision = precision

    @property
    def device(self):
        import torch
        return torch.device("cpu")

    dp_size = property(lambda self: 1)
    dp_rank = property(lambda self: 0)

    def setup(self):
        pass

    def wrap(self, model, optimizer_config, scheduler_factory):
        import torch
        from cptcore.train.optim import param_groups, strip_names
        opt = torch.optim.AdamW(strip_names(param_groups(model, optimizer_config.weight_decay)),
                                lr=optimizer_config.lr, betas=tuple(optimizer_config.betas), eps=optimizer_config.eps)
        return model, opt, (scheduler_factory(opt) if scheduler_factory else None)

    def forward(self, model, batch):
        keys = ("input_ids", "attention_mask", "position_ids")
        return model(**{k: batch[k] for k in keys if k in batch}).logits

    def forward_backward(self, model, optimizer, batch, loss_fn, normaliser, sync=True):
        loss_sum, _ = loss_fn(self.forward(model, batch), batch)
        (loss_sum * normaliser).backward()
        return loss_sum.detach()

    def clip_and_step(self, optimizer, max_norm):
        import torch
        params = [p for g in optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        optimizer.step()
        return float(norm)

    def save(self, ckpt_dir, model, optimizer, lr_scheduler):
        import torch
        d = Path(ckpt_dir)
        d.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), d / "model.pt")
        torch.save(optimizer.state_dict(), d / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), d / "lr_scheduler.pt")

    def load(self, ckpt_dir, model, optimizer, lr_scheduler):
        import torch
        d = Path(ckpt_dir)
        model.load_state_dict(torch.load(d / "model.pt", weights_only=True))
        optimizer.load_state_dict(torch.load(d / "optimizer.pt", weights_only=True))
        lr_scheduler.load_state_dict(torch.load(d / "lr_scheduler.pt", weights_only=True))

    def unwrap(self, model):
        return model


@dataclass(frozen=True)
class SmoothOptions:
    eps: float = 0.1


def smooth_loss(logits, batch, options):
    import torch.nn.functional as F
    eps = (options or SmoothOptions()).eps
    x = logits[:, :-1].float()
    y = batch["labels"][:, 1:]
    loss = F.cross_entropy(x.reshape(-1, x.size(-1)), y.reshape(-1), ignore_index=-100, reduction="sum",
                           label_smoothing=eps)
    return loss, int((y != -100).sum())


@hookimpl
def cpt_register_strategies():
    return [StrategySpec(name="plain", build=lambda options, config: PlainStrategy(config.strategy.precision),
                         description="plain torch, one process")]


@hookimpl
def cpt_register_objectives():
    return [ObjectiveSpec(name="smooth", loss=smooth_loss, count=lambda b: int((b["labels"][:, 1:] != -100).sum()),
                          options=SmoothOptions, description="label-smoothed CE")]
