"""The :class:`Trainer`: one training run, as methods a custom loop may override or reuse.

Built from a :class:`~cptcore.train.plan.Plan` (what :func:`~cptcore.train.plan.precheck`
validated, once) and the plugin manager; :meth:`Trainer.setup` creates the process group
if none exists (:func:`cptcore.train.launch.init_distributed`: torchrun's environment,
or one local process). ``fit()`` is what ``cpt train`` runs::

    trainer = Trainer(precheck(config, pm), pm).setup()   # strategy, data, model, noise, wrap, resume
    trainer.fit()                                         # steps -> evaluate / checkpoint -> export

and a custom loop composes the same parts (``examples/custom_trainer.py``)::

    batches, _ = trainer.next_batches()
    metrics = trainer.train_step(batches)     # accumulate (token-weighted) -> clip -> step -> schedule
    trainer.evaluate(); trainer.save_checkpoint(); trainer.export()

``train_step`` is the only copy of the step: ``backward()`` is one hop away, inside
``strategy.forward_backward`` (:mod:`cptcore.train.strategy`), with the objective's loss.
Evaluation iterates over :attr:`Trainer.eval_sets`: one entry per named ``data.eval`` set
(``--eval-data NAME=PATH``), reported as ``eval/NAME/{loss,perplexity,bpb,tokens}``.

Outputs (``OUT = training.out_dir``): ``config.yaml``, ``logs/metrics.jsonl``,
``logs/tensorboard/``, ``checkpoints/step-N/``, ``final/``, ``summary.json``.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist

from ..config import write_resolved
from ..errors import CptError
from ..eval.bpb import EvalResult as BpbResult
from ..eval.bpb import eval_metrics
from ..eval.bpb import result as bpb_result
from ..eval import ledger_train
from ..eval.prepared import evaluate_prepared
from ..recipes.mixing import DataExhausted, format_shares, mixing_fields
from ..recipes.trainable import count_params, count_trainable, optimizer_state_note
from ..registries import call_provider
from . import build
from .checkpoint import load_checkpoint, save_checkpoint
from .data import Loader, collate
from .launch import init_distributed
from .mfu import count_n
from .metrics import (Progress, make_loggers, mean_mfu, mfu_meter, mfu_metrics, peak_memory_mb, progress_info,
                      truncate_jsonl)
from .optim import scheduler_factory
from .plan import check_batches, log
from .state import StepMetrics, TrainState  # re-exported: cptcore.train.trainer.TrainState

if TYPE_CHECKING:
    from ..plugins import CptPluginManager
    from .plan import Plan
    from .strategy import Strategy


def all_reduce_sum(values: Sequence[float], device: Any, group: Any = None) -> list[float]:
    """Sum over ``group`` (the data-parallel group: TP/PP ranks hold the same tokens); float64."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, group=group)
    return t.tolist()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


class Trainer:
    """One run: strategy, model, optimizer, scheduler, data, counters (see the module
    docstring). Construction does nothing heavy; :meth:`setup` builds the parts.

    Attributes (after :meth:`setup`): ``strategy`` (:class:`~cptcore.train.strategy.Strategy`),
    ``model`` (wrapped), ``hf_model`` (the unwrapped module it wraps), ``optimizer``,
    ``scheduler``, ``loader`` (``None`` without training data), ``eval_sets``
    (name -> ``f()`` returning an eval result or an iterable of batches), ``mc_sets``, ``ledger``
    (:class:`~cptcore.eval.ledger_run.RunLedger`), ``noise`` (handle or ``None``), ``state``.
    ``baseline`` ({NAME: {bpb, loss, ...}}): the eval results every change is measured
    against; ``None`` = evaluate at step 0 in :meth:`fit` (a later stage is handed the first's).
    """

    def __init__(self, plan: "Plan", pm: "CptPluginManager", baseline: Mapping[str, Any] | None = None) -> None:
        self.plan = plan
        self.pm = pm
        self.config = plan.config
        self.out = Path(plan.config.training.out_dir)
        self.state = TrainState()
        self.objective = plan.objective
        self.collate_fn: Callable[..., dict] = plan.objective.spec.collate or collate
        # name -> f() returning an EvalResult (built-in sets) or an iterable of batches (custom sets)
        self.eval_sets: dict[str, Callable[[], Any]] = {}
        self.mc_sets: dict[str, Callable[[], dict]] = {}  # name -> f() -> {eval/NAME/acc, ...} (data.eval_mc)
        self.baseline = baseline
        self.ledger: Any = None
        self.mfu: Any = None  # cptcore.train.mfu.Meter of the run (fit); None: no known peak
        self.flops_done = 0.0  # model FLOPs of the steps fit() ran
        self.strategy: "Strategy" = None  # type: ignore[assignment]
        self.model: Any = None
        self.hf_model: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.loader: Loader | None = None
        self.sampler: Any = None
        self.loader_data: tuple[Any, Any] | None = None
        self.noise: Any = None
        self.mask_dtype: Any = torch.float32
        self.block_mask = True

    # ------------------------------------------------------------------ setup
    def setup(self) -> "Trainer":
        """Build, in this order (the RNG order bit-exact resume relies on): process
        group (if none), strategy,
        training data and resolved ``OUT/config.yaml``, seed, model, noise, wrap
        (optimizer after the model), eval sets, resume. Returns ``self``."""
        t = self.config.training
        init_distributed(t.seed)  # idempotent: a no-op under cpt train / torchrun
        self.strategy = self.build_strategy()
        self.loader_data = self.build_data()
        if self.plan.train and rank() == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            write_resolved(self.config, self.out)
        random.seed(t.seed)
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)
        self.hf_model = self.build_model()
        impl = (getattr(self.hf_model, "cpt_attn_implementation", None)
                or getattr(getattr(self.hf_model, "config", None), "_attn_implementation", "sdpa"))
        self.block_mask = impl != "flash_attention_2"
        self.noise = build.attach_noise(self.plan.noise, self.hf_model)
        n_all, n_grad = count_params(self.hf_model)
        n_train = count_trainable(self.hf_model, self.config)
        self.mfu_n = count_n(self.hf_model)  # before wrap: sharding strategies empty the local parameters
        log(f"strategy {self.strategy.name} ({self.plan.world_size} process(es), dp={self.strategy.dp_size}), "
            f"precision {self.strategy.precision}, {n_train:,} of {n_all:,} parameters trainable{optimizer_state_note(n_train, n_grad)}, "
            f"{self.plan.accumulation} micro-batch(es) of {t.micro_batch_size} per step")
        self.model, self.optimizer, self.scheduler = self.strategy.wrap(
            self.hf_model, self.config.optimizer, scheduler_factory(self.plan.schedule, t.max_steps))
        self.mask_dtype = self.compute_dtype()
        if self.config.model.gradient_checkpointing and not getattr(self.hf_model, "is_gradient_checkpointing", False):
            raise CptError("gradient checkpointing was requested but the model does not have it enabled")
        if self.loader_data is not None:
            data, self.sampler = self.loader_data
            self.loader = Loader(data, self.sampler, self.plan.pad_id, block_mask=self.block_mask,
                                 mask_dtype=self.mask_dtype, collate_fn=self.collate_fn)
        self.eval_sets = self.build_eval_sets()
        self.mc_sets, self.ledger = ledger_train.build_mc_sets(self), ledger_train.build_ledger(self)
        if self.plan.resume is not None:
            self.load_checkpoint(self.plan.resume)
        return self

    def build_strategy(self) -> "Strategy":
        """``StrategySpec.build(options, config)`` then ``setup()``."""
        choice = self.plan.strategy
        strategy = choice.spec.build(choice.options, self.config)
        strategy.setup()
        return strategy

    def build_data(self) -> tuple[Any, Any] | None:
        """``(MixedDataset, MixedSampler)`` of the planned training folders (``None``
        without any); the batch arithmetic is checked here only when the manifests did
        not state their row counts."""
        if not self.plan.train:
            return None
        data, sampler = build.open_training_data(self.plan, self.strategy.dp_size, self.strategy.dp_rank)
        if any(m.rows is None for m in self.plan.manifests):
            check_batches(data.lengths, data.weights, self.config.training.micro_batch_size, self.strategy.dp_size,
                          self.plan.accumulation)
        return data, sampler

    def build_model(self) -> Any:
        """``cpt_build_model`` (+ LoRA) and the freeze policy (:func:`build.build_model`)."""
        return build.build_model(self.config, self.pm)

    def build_eval_sets(self) -> dict[str, Callable[[], "BpbResult"]]:
        """Name -> ``f() -> EvalResult`` for :meth:`evaluate`: one entry per named
        ``data.eval`` set (``--eval-data NAME=PATH``), each scored by
        :func:`cptcore.eval.prepared.evaluate_prepared` through the strategy's forward
        (empty without eval data)."""
        t = self.config.training

        def scorer(name: str, path: Path) -> Callable[[], "BpbResult"]:
            def score() -> "BpbResult":
                try:
                    return evaluate_prepared(
                        self.model, path, micro_batch_size=t.micro_batch_size, pad_id=self.plan.pad_id,
                        block_mask=self.block_mask, mask_dtype=self.mask_dtype, limit=t.eval_batches,
                        device=self.strategy.device, forward=lambda m, b: self.strategy.forward(m, self.to_device(b)),
                        dp_size=self.strategy.dp_size, dp_rank=self.strategy.dp_rank,
                        reduce=lambda v: all_reduce_sum(list(v), self.strategy.device, self.strategy.dp_group))
                except ValueError as exc:
                    raise CptError(f"eval set '{name}' ({path}): {exc}") from None
            return score

        names = self.plan.eval_names or tuple(s.path.name for s in self.plan.eval)
        return {name: scorer(name, src.path) for name, src in zip(names, self.plan.eval)}

    def compute_dtype(self) -> Any:
        """The dtype activations (and so the attention mask) have."""
        precision = self.strategy.precision
        if precision == "bf16":
            return torch.bfloat16
        if precision == "fp16":
            return torch.float16
        return next(self.hf_model.parameters()).dtype

    # ------------------------------------------------------------------ step
    def loss_fn(self, logits: Any, batch: Mapping[str, Any]) -> tuple[Any, int]:
        """The objective's ``(loss_sum, token_count)`` for one micro-batch."""
        return self.objective.spec.loss(logits, batch, self.objective.options)

    def to_device(self, batch: Mapping[str, Any]) -> dict:
        """``batch`` on the strategy's device; the noise sees the per-row fields it declared."""
        batch = {k: v.to(self.strategy.device) for k, v in batch.items()}
        if self.noise is not None and self.plan.noise.spec.batch_fields:
            self.noise.observe({k: batch[k] for k in self.plan.noise.spec.batch_fields if k in batch})
        return batch

    def next_batches(self) -> tuple[list[dict], bool]:
        """One step's micro-batches from the loader, and whether an epoch ended among them.

        Raises:
            CptError: the plan has no training data.
        """
        if self.loader is None:
            raise CptError("no training data in the plan (data.train): pass your own batches to train_step")
        batches, epoch_end = [], False
        before = self.loader.sampler.state_dict()
        for _ in range(self.plan.accumulation):
            try:
                batch, ended = self.loader.next()
            except DataExhausted:  # a source may not repeat: no partial step, state as before it
                self.loader.sampler.load_state_dict(before)
                raise
            epoch_end = epoch_end or ended
            batches.append(batch)
        return batches, epoch_end

    def train_step(self, batches: Sequence[Mapping[str, Any]]) -> StepMetrics:
        """One optimizer step over ``batches`` (this rank's micro-batches, CPU or device
        tensors as :func:`~cptcore.train.data.collate` makes them).

        Token-weighted: the objective's token count of all micro-batches on all ranks
        is all-reduced first, each micro-batch backpropagates ``loss_sum * dp / N``
        (:mod:`cptcore.train.strategy`), then clip, step, schedule, zero the gradients.
        A step without any label token skips the backward and the update (the LR
        schedule still advances) and reports loss and grad norm 0.0, never NaN.
        """
        start = time.time()
        self.model.train()  # eval switches to eval mode; checkpointing and noise need train mode
        count = self.objective.spec.count
        local = [float(sum(count(b) for b in batches)),
                 float(sum(int(b["lengths"].sum()) if "lengths" in b else b["input_ids"].numel() for b in batches))]
        n_tokens, n_input = all_reduce_sum(local, self.strategy.device, self.strategy.dp_group)
        lr = self.scheduler.get_last_lr()[0] if self.scheduler is not None else self.config.optimizer.lr
        loss_sum, grad_norm = 0.0, 0.0
        if n_tokens > 0:
            normaliser = self.strategy.dp_size / n_tokens
            for i, batch in enumerate(batches):
                batch = self.to_device(batch)
                loss_sum += float(self.strategy.forward_backward(self.model, self.optimizer, batch, self.loss_fn,
                                                                 normaliser, sync=i == len(batches) - 1))
            grad_norm = self.strategy.clip_and_step(self.optimizer, self.config.optimizer.grad_clip)
        if self.scheduler is not None:
            with warnings.catch_warnings():  # a skipped update: torch warns the schedule ran ahead
                warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
                self.scheduler.step()
        self.optimizer.zero_grad()
        (loss_total,) = all_reduce_sum([loss_sum], self.strategy.device, self.strategy.dp_group)
        self.state.step += 1
        self.state.micro_batches += len(batches)
        self.state.tokens_seen += int(n_input)
        self.state.loss_tokens += int(n_tokens)
        if self.sampler is not None:
            self.state.sampler = self.sampler.state_dict()
        return StepMetrics(loss=loss_total / n_tokens if n_tokens else 0.0, grad_norm=grad_norm, lr=lr,
                           tokens=int(n_input), loss_tokens=int(n_tokens), seconds=time.time() - start)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        """Every set of :attr:`eval_sets` and :attr:`mc_sets`, forward only, all ranks;
        returns :meth:`eval_metrics` of the per-set results, the multiple-choice keys
        (``eval/NAME/acc``...) and, once there is a baseline, ``eval/NAME/bpb_delta``
        (``acc_delta``) = value - baseline (``{}`` without sets)."""
        if not self.eval_sets and not self.mc_sets:
            return {}
        self.model.eval()
        try:
            results = {name: self.score_eval_set(source()) for name, source in self.eval_sets.items()}
            out = self.eval_metrics(results) if results else {}
            for source in self.mc_sets.values():
                out.update(source())
        finally:
            self.model.train()
        return {**out, **(self.ledger.deltas(out) if self.ledger is not None else {})}

    def score_eval_set(self, source: Any) -> "BpbResult":
        """One eval set's result: ``source`` is what an :attr:`eval_sets` entry returned,
        either a finished result (the built-in sets) or an iterable of batches (a custom
        loop's own set: scored with the objective's loss, summed over the data-parallel
        group; bytes from a ``label_bytes`` column when the batches carry one).

        Raises:
            CptError: the set has no label token.
        """
        if isinstance(source, BpbResult):
            return source
        total, tokens, nbytes = 0.0, 0, 0
        with torch.no_grad():
            for batch in source:
                batch = self.to_device(batch)
                loss_sum, count = self.loss_fn(self.strategy.forward(self.model, batch), batch)
                total += float(loss_sum)
                tokens += int(count)
                lb = batch.get("label_bytes")
                nbytes = None if (nbytes is None or lb is None) else nbytes + int(lb.sum())
        total, count, nb = all_reduce_sum([total, float(tokens), float(nbytes or 0)], self.strategy.device,
                                          self.strategy.dp_group)
        if count <= 0:
            raise CptError("evaluation data has no label tokens")
        return bpb_result(total, int(count), None if nbytes is None else int(nb))

    def eval_metrics(self, results: Mapping[str, "BpbResult"]) -> dict[str, Any]:
        """:func:`cptcore.eval.bpb.eval_metrics`: ``eval/NAME/{loss,perplexity,bpb,tokens}``
        per set and the pooled ``eval_loss``/``eval_perplexity``/``eval_tokens``/``eval_bpb``."""
        return eval_metrics(results)

    # ------------------------------------------------------------------ state I/O
    def save_checkpoint(self) -> Path:
        """``OUT/checkpoints/step-N`` (atomic, keep-last-K; every rank calls it)."""
        c = self.config.checkpointing
        if self.ledger is not None:
            self.state.ledger = self.ledger.state_dict()
        return save_checkpoint(self.out, self.state.step, self.strategy, self.model, self.optimizer, self.scheduler,
                               self.state.to_dict(), self.config, c.keep_last, hf_model=self.hf_model,
                               protect=self.ledger.protected() if self.ledger is not None else ())

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model, optimizer, scheduler, RNG, sampler position and counters.

        Raises:
            CptError: unreadable checkpoint, or its scheduler disagrees with its step.
        """
        saved = load_checkpoint(Path(path), self.strategy, self.model, self.optimizer, self.scheduler,
                                new_data=self.config.checkpointing.new_data)
        self.state = TrainState.from_dict(saved)
        if self.ledger is not None:
            self.ledger.load_state_dict(self.state.ledger, f"{Path(path) / 'trainer_state.json'}")
        if self.sampler is not None:
            self.sampler.load_state_dict(saved["sampler"])
        if self.scheduler is not None and self.scheduler.last_epoch != self.state.step:
            raise CptError(f"{path}: LR scheduler is at update {self.scheduler.last_epoch}, "
                           f"trainer state at step {self.state.step}")
        where = f" (epoch {self.sampler.epoch}, micro-batch {self.sampler.position})" if self.sampler is not None else ""
        log(f"resumed from {path} at step {self.state.step}{where}")

    def unwrapped(self) -> Any:
        """The trained HF module with full weights (every rank must call it)."""
        return self.strategy.unwrap(self.model)

    def export(self, out_dir: str | Path | None = None) -> Path:
        """Write the model as a Hugging Face folder (``cpt_save``; default ``OUT/final``,
        replaced). Every rank unwraps; rank 0 writes. Returns the folder."""
        final_dir = Path(out_dir) if out_dir is not None else self.out / "final"
        module = self.unwrapped()
        if rank() == 0:
            if final_dir.exists():
                shutil.rmtree(final_dir)
            call_provider(self.pm, "cpt_save", model=module, out_dir=final_dir, config=self.config,
                          tokenizer=self.plan.tokenizer)
        return final_dir

    # ------------------------------------------------------------------ the run
    def due(self, every: int) -> bool:
        """True at every ``every``-th step (0: never) and at the last one."""
        return bool(every and self.state.step % every == 0) or self.state.step == self.config.training.max_steps

    def fit(self) -> dict[str, Any]:
        """Steps until ``training.max_steps`` with logging, evaluation and checkpoints on
        their cadence, then export; returns the summary (``OUT/summary.json`` on rank 0)."""
        t0 = time.time()
        if self.strategy is None:
            self.setup()
        if self.loader is None:
            raise CptError("Trainer.fit() needs training data (data.train); call train_step(batches) with your own")
        t, resumed = self.config.training, self.plan.resume is not None
        tokens_at_start = self.state.tokens_seen
        loggers = []
        if rank() == 0:
            # resumed: drop what a killed run logged past the checkpoint; fresh (only reachable
            # with an old metrics.jsonl through --resume auto finding no checkpoint): drop all
            truncate_jsonl(self.out / "logs" / "metrics.jsonl", self.state.step if resumed else -1)
            loggers = make_loggers(self.plan.loggers, self.out / "logs", self.config)
        progress = Progress(t.max_steps, self.state.step, self.config.logging.progress and rank() == 0)
        start_time, step_time = time.time(), 0.0  # step_time: steps only, no eval/checkpoint
        self.mfu, self.flops_done = mfu_meter(self), 0.0  # MFU: cptcore.train.mfu
        metrics: dict[str, Any] = {}
        eval_metrics: dict[str, Any] = {}
        stopped = None
        try:
            eval_metrics = ledger_train.start(self, loggers)  # the step-0 baseline (not on resume)
            while self.state.step < t.max_steps:
                step_start = time.time()
                try:
                    batches, epoch_end = self.next_batches()
                except DataExhausted as exc:  # data.repeat false: stop cleanly with a checkpoint
                    stopped = str(exc)
                    log(f"{stopped} at step {self.state.step}")
                    if self.state.step and not self.due(self.config.checkpointing.save_every):
                        self.save_checkpoint()
                    break
                m = self.train_step(batches)
                dt = time.time() - step_start
                step_time += dt
                metrics = {"loss": m.loss, "lr": m.lr, "grad_norm": m.grad_norm,
                           "tokens_per_second": m.tokens / dt if dt > 0 else 0.0,
                           "tokens_seen": self.state.tokens_seen, "epoch": self.sampler.epoch,
                           "peak_memory_mb": peak_memory_mb(self.strategy.device),
                           **mfu_metrics(self.mfu, batches, m.tokens, dt)}
                self.flops_done += metrics.get("model_flops", 0.0)
                if epoch_end:
                    metrics["epoch_end"] = 1
                metrics.update(self.sampler.tally.metrics() if hasattr(self.sampler, "tally") else {})
                verdict = None
                if self.due(t.eval_every) and (self.eval_sets or self.mc_sets):
                    eval_metrics = self.evaluate()
                    metrics.update(eval_metrics)
                    verdict = self.ledger.observe(self.state.step, eval_metrics)
                    for line in verdict.warnings:
                        log(line)
                if rank() == 0 and (self.due(max(1, self.config.logging.log_every)) or verdict is not None):
                    for lg in loggers:
                        lg.log(metrics, self.state.step)
                progress.update(self.state.step, progress_info(metrics) + self.ledger.progress_text())
                if self.due(self.config.checkpointing.save_every) or (verdict is not None and verdict.save):
                    self.save_checkpoint()
                if verdict is not None and verdict.stop:  # eval.on_budget: stop
                    stopped = verdict.stop
                    break
        finally:
            progress.close()
            for lg in loggers:
                lg.close()
        final_dir = self.export()
        if self.noise is not None:
            self.noise.remove()
        return self.summary(t0, start_time, step_time, tokens_at_start, metrics, eval_metrics, final_dir, stopped)

    def summary(self, t0: float, start_time: float, step_time: float, tokens_at_start: int,
                metrics: Mapping[str, Any], eval_metrics: Mapping[str, Any], final_dir: Path,
                stopped: str | None = None) -> dict[str, Any]:
        """The run's summary dict, written to ``OUT/summary.json`` by rank 0."""
        wall = time.time() - t0
        this_run = self.state.tokens_seen - tokens_at_start
        summary = {
            "steps": self.state.step,
            "resumed_from": str(self.plan.resume) if self.plan.resume is not None else None,
            "tokens_trained": self.state.tokens_seen,
            "tokens_this_run": this_run,
            "wall_time_s": round(wall, 3),
            "train_time_s": round(time.time() - start_time, 3),
            "step_time_s": round(step_time, 3),
            "tokens_per_second": this_run / step_time if step_time > 0 else 0.0,  # training steps only
            "wall_tokens_per_second": this_run / wall if wall > 0 else 0.0,  # setup, eval, checkpoints, export too
            "mfu": mean_mfu(self.mfu, self.flops_done, step_time),  # steps only
            "final_loss": metrics.get("loss"),
            "final_eval_loss": eval_metrics.get("eval_loss"),
            "final_eval_perplexity": eval_metrics.get("eval_perplexity"),
            "final_eval_bpb": eval_metrics.get("eval_bpb"),
            "final_eval": {name: {k: eval_metrics[f"eval/{name}/{k}"] for k in ("loss", "perplexity", "bpb", "tokens",
                                  "acc") if f"eval/{name}/{k}" in eval_metrics} for name in (*self.eval_sets, *self.mc_sets)},
            "world_size": self.plan.world_size, "strategy": self.strategy.name, "final_dir": str(final_dir),
            "ledger": ledger_train.finish(self, rank()),
            **mixing_fields(self.sampler, stopped),  # stopped, data_mixing (cptcore.recipes.mixing)
        }
        if rank() == 0:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
            log(f"done: {self.state.step} steps, final loss {summary['final_loss']}, export in {final_dir}")
            for line in format_shares(summary.get("data_mixing", {}).get("sources", {})):
                log(f"data: {line}")
        return summary
