"""The training loop behind ``cpt train``.

Order of work: cheap checks (config, paths, checkpoint, names) -> process group and
plugin fingerprint -> strategy -> tokenizer and data (manifest check, sizes) -> model,
noise, optimizer, boost -> resume -> steps (accumulate, clip, step, schedule, log,
evaluate, checkpoint) -> final eval, checkpoint and export to ``OUT/final``.

Outputs (``OUT = training.out_dir``): ``config.yaml``, ``logs/metrics.jsonl``,
``logs/tensorboard/``, ``checkpoints/step-N/``, ``final/``, ``summary.json``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, CptError


def _log(msg: str) -> None:
    import os

    if os.environ.get("RANK", "0") in ("", "0"):
        print(f"cpt train: {msg}", file=sys.stderr, flush=True)


@dataclass
class TrainState:
    """Counters saved in ``trainer_state.json``."""

    step: int = 0  # optimizer steps done
    micro_batches: int = 0  # micro-batches consumed per rank
    tokens_seen: int = 0  # non-pad input tokens over all ranks
    loss_tokens: int = 0  # label tokens that carried loss, all ranks
    sampler: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"step": self.step, "micro_batches": self.micro_batches, "tokens_seen": self.tokens_seen,
                "loss_tokens": self.loss_tokens, "sampler": self.sampler, "epoch": self.sampler.get("epoch", 0)}


def precheck(config: Any, pm: Any, world_size: int | None = None) -> Path | None:
    """Every check that needs no heavy library: paths, names, values, the resume
    checkpoint. Returns the checkpoint to resume from (or None).

    Raises:
        CptError subclasses, one line each.
    """
    from ..model.load import check_model_path, choose_attention, compute_dtype
    from .build import FREEZE_CHOICES, validate_strategy
    from .checkpoint import resolve_resume
    from .resume_check import check_resume
    from .runlock import ensure_writable
    from .data import parse_source
    from .optim import lr_lambda

    t = config.training
    check_model_path(config.model.path)
    if not config.data.train:
        raise ConfigError("no training data (use --data PATH[:WEIGHT] or data.train in the config)")
    for spec in [*config.data.train, *config.data.eval.values()]:
        src = parse_source(spec)
        if not src.path.exists():
            from ..errors import DataError

            raise DataError("prepared data folder not found", path=str(src.path))
    if t.max_steps < 1:
        raise ConfigError(f"training.max_steps must be >= 1, got {t.max_steps}")
    for key in ("eval_every", "micro_batch_size"):
        if getattr(t, key) < (1 if key == "micro_batch_size" else 0):
            raise ConfigError(f"training.{key} has an invalid value {getattr(t, key)}")
    if config.checkpointing.save_every < 0:
        raise ConfigError("checkpointing.save_every must be >= 0")
    if t.freeze not in FREEZE_CHOICES:
        raise ConfigError(f"training.freeze: unknown '{t.freeze}' (valid: {', '.join(FREEZE_CHOICES)})")
    if config.lora.enabled and t.freeze != "none":
        raise ConfigError("--freeze non-embeddings and lora.enabled exclude each other (use lora.train_embeddings)")
    lr_lambda(config.schedule.name, config.schedule.warmup_steps, t.max_steps, config.schedule.min_lr_ratio)
    check_optimizer(config.optimizer)
    if config.strategy.precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"strategy.precision must be fp32, bf16 or fp16, got '{config.strategy.precision}'")
    choose_attention(config.model.attn_implementation, compute_dtype(config.model.dtype, config.strategy.precision))
    validate_strategy(config, pm, world_size)  # world: the launcher passes nproc x nnodes
    if config.noise.name:
        from ..config import parse_options

        nspec = pm.registry("noise").get(config.noise.name)  # options too, before the model loads
        parse_options(nspec.options, config.noise.options, owner=f"noise '{nspec.name}'", config=config, section="noise")
    for name in config.logging.loggers:
        pm.registry("loggers").get(name)
    from ..model.load import load_tokenizer
    from .data import check_sources

    sources = [parse_source(s) for s in [*config.data.train, *config.data.eval.values()]]
    from ..data.manifest import check_labelled

    for src, manifest in zip(sources, check_sources(sources, load_tokenizer(config.model))):
        check_labelled(manifest, src.path)  # no row without a label token (a NaN loss)
    resume = resolve_resume(config.checkpointing.resume, t.out_dir, log=_log)
    if resume is not None:
        done = int(check_resume(resume, config, pm, world_size)["step"])  # verified, layout, data
        if done > t.max_steps:
            raise ConfigError(
                f"{resume} is at step {done}, past training.max_steps={t.max_steps}: "
                "raise --max-steps to continue it (or export it with cpt export)"
            )
    elif config.checkpointing.resume == "auto":
        _log(f"--resume auto: no checkpoint in {t.out_dir}/checkpoints, starting fresh")
    else:
        check_fresh_out(t.out_dir)
    ensure_writable(t.out_dir)  # one line now, not a traceback after the model loads
    return resume


def check_optimizer(opt: Any) -> None:
    """The AdamW values torch would reject only after the model is loaded (with a
    traceback), checked first.

    Raises:
        ConfigError: ``lr`` not > 0 and finite; ``eps``, ``weight_decay`` or
            ``grad_clip`` < 0; ``betas`` not two numbers in [0, 1).
    """
    if not (opt.lr > 0 and math.isfinite(opt.lr)):
        raise ConfigError(f"optimizer.lr must be a positive finite number, got {opt.lr}")
    for key in ("eps", "weight_decay", "grad_clip"):
        if not getattr(opt, key) >= 0:
            raise ConfigError(f"optimizer.{key} must be >= 0, got {getattr(opt, key)}")
    betas = list(opt.betas)
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {betas}")


def check_fresh_out(out_dir: str | Path) -> None:
    """Refuse to start a fresh run in a folder that holds another run: its
    ``final/`` would be replaced, its ``metrics.jsonl`` appended to, and a later
    ``--resume auto`` would pick up the old run's checkpoints.

    Raises:
        ConfigError: ``out_dir`` holds ``summary.json``, ``final/``,
            ``logs/metrics.jsonl`` or a ``checkpoints/step-N``.
    """
    from .checkpoint import list_checkpoints

    out = Path(out_dir)
    found = [name for name in ("summary.json", "final", "logs/metrics.jsonl") if (out / name).exists()]
    found += [f"checkpoints/{p.name}" for p in list_checkpoints(out)[-1:]]
    if found:
        raise ConfigError(
            f"{out} already holds a run ({', '.join(found)}): continue it with --resume auto, "
            "or choose another --out (or delete the folder)"
        )


def _all_reduce_sum(values: list[float], device: Any, group: Any = None) -> list[float]:
    """Sum over ``group`` (the data-parallel group: TP/PP ranks hold the same tokens)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, group=group)
    return t.tolist()


def _mask_dtype(strategy: Any, model: Any) -> Any:
    import torch

    if strategy.precision == "bf16":
        return torch.bfloat16
    if strategy.precision == "fp16":
        return torch.float16
    return next(model.parameters()).dtype


def evaluate(strategy: Any, model: Any, hf_model: Any, config: Any, pad_id: int | None, block: bool, mask_dtype: Any) -> dict:
    """Every named eval set (``data.eval``) through
    :func:`cptcore.eval.prepared.evaluate_prepared` (all ranks), plus the pooled figures.

    Returns:
        Per set ``NAME``: ``eval/NAME/loss`` (nats/token), ``eval/NAME/perplexity``,
        ``eval/NAME/bpb`` (bits per UTF-8 byte; absent for folders prepared without
        ``label_bytes``), ``eval/NAME/tokens``; pooled over all sets (token-weighted, as
        before named sets): ``eval_loss``, ``eval_perplexity``, ``eval_tokens`` and
        ``eval_bpb`` (when every set has bytes). ``{}`` when no eval data is configured.
        ``training.eval_batches`` caps the micro-batches per set.
    """
    from ..eval.bpb import result
    from ..eval.prepared import evaluate_prepared
    from .data import parse_source

    if not config.data.eval:
        return {}

    def forward(m: Any, batch: dict) -> Any:
        hf_model.cpt_real_lengths = batch["lengths"]
        return strategy.forward(m, batch)

    def reduce(values: Any) -> list[float]:
        return _all_reduce_sum(list(values), strategy.device, strategy.dp_group)

    model.eval()
    out: dict = {}
    nll, tokens, nbytes = 0.0, 0, 0
    try:
        for name, spec in config.data.eval.items():
            try:
                r = evaluate_prepared(model, parse_source(spec).path, micro_batch_size=config.training.micro_batch_size,
                                      pad_id=pad_id, block_mask=block, mask_dtype=mask_dtype,
                                      limit=config.training.eval_batches, device=strategy.device, forward=forward,
                                      dp_size=strategy.dp_size, dp_rank=strategy.dp_rank, reduce=reduce)
            except ValueError as exc:
                raise CptError(f"eval set '{name}' ({spec}): {exc}") from None
            out.update({f"eval/{name}/{k}": v for k, v in r.metrics().items()})
            nll, tokens = nll + r.nll, tokens + r.tokens
            nbytes = None if (nbytes is None or r.bytes is None) else nbytes + r.bytes
    finally:
        model.train()
    pooled = result(nll, tokens, nbytes)
    out.update({"eval_loss": pooled.loss, "eval_perplexity": pooled.perplexity, "eval_tokens": pooled.tokens})
    if pooled.bpb is not None:
        out["eval_bpb"] = pooled.bpb
    return out


def absolute_inputs(config: Any) -> Any:
    """``config`` with ``model.path``, ``model.tokenizer`` and every ``data.train``/
    ``data.eval`` folder made absolute (weights kept), so the ``config.yaml`` written
    into ``OUT`` and every checkpoint works from any directory (``cpt export``,
    ``--resume PATH``); relative paths are otherwise relative to where ``cpt train`` ran.
    """
    import dataclasses
    import os

    from .data import parse_source

    def spec(value: str) -> str:
        src = parse_source(value)
        if src.path.is_absolute():
            return value
        if Path(value) == src.path:  # no weight suffix
            return os.path.abspath(value)
        return f"{os.path.abspath(value.rsplit(':', 1)[0])}:{value.rsplit(':', 1)[1]}"

    model = config.model
    model = dataclasses.replace(
        model,
        path=os.path.abspath(model.path) if model.path else model.path,
        tokenizer=os.path.abspath(model.tokenizer) if model.tokenizer else model.tokenizer,
    )
    data = dataclasses.replace(config.data, train=[spec(v) for v in config.data.train],
                               eval={name: spec(v) for name, v in config.data.eval.items()})
    return dataclasses.replace(config, model=model, data=data)


def train(config: Any, pm: Any) -> dict:
    """Run a whole training job as described by ``config``; returns the summary dict
    (also written to ``OUT/summary.json`` by rank 0).

    Raises:
        CptError subclasses for user mistakes (before heavy work where possible).
    """
    from .launch import check_fingerprints, init_distributed

    import os

    from .runlock import run_folder

    resume = precheck(config, pm)
    config = absolute_inputs(config)
    out = Path(config.training.out_dir)
    # rank 0 locks OUT for the run; every rank reports write failures under OUT in one line
    with run_folder(out, int(os.environ.get("RANK", "0") or 0)):
        rank, world = init_distributed(config.training.seed)
        check_fingerprints(pm)
        try:
            return _train(config, pm, resume, out, rank, world)
        finally:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _train(config: Any, pm: Any, resume: Path | None, out: Path, rank: int, world: int) -> dict:
    import random

    import numpy as np
    import torch

    from ..config import write_resolved
    from ..model.load import load_tokenizer
    from ..registries import call_provider
    from . import build
    from .checkpoint import load_checkpoint, save_checkpoint
    from .data import Loader, seq_length
    from .metrics import Progress, make_loggers, peak_memory_mb, truncate_jsonl
    from .optim import param_groups, scheduler_factory, strip_names
    from .strategy import count_label_tokens

    t0 = time.time()
    t = config.training
    strategy = build.build_strategy(config, pm)
    tokenizer = load_tokenizer(config.model)
    data, sampler, manifests = build.build_data(config, tokenizer, strategy.dp_size, strategy.dp_rank)
    accum = build.accumulation_steps(config, seq_length(manifests), strategy.dp_size)
    per_epoch = sampler.batches_per_epoch()
    if per_epoch < 1:
        raise ConfigError(
            f"the training data ({sum(data.lengths)} rows) is smaller than one global micro-batch "
            f"({t.micro_batch_size} x {strategy.dp_size} ranks)")
    if accum > per_epoch:
        raise ConfigError(
            f"accumulation ({accum} micro-batches per step) is larger than the data "
            f"({per_epoch} micro-batches per rank per epoch)")
    pad_id = manifests[0].get("pad_id", tokenizer.pad_token_id)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_resolved(config, out)

    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)
    model = build.build_model(config, pm)
    hf_model = model
    impl = getattr(model, "cpt_attn_implementation", None) or getattr(model.config, "_attn_implementation", "sdpa")
    block = impl != "flash_attention_2"
    noise = build.attach_noise(config, pm, hf_model)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    _log(f"strategy {strategy.name} ({world} process(es), dp={strategy.dp_size}), precision {strategy.precision}, "
         f"{n_train:,} of {n_all:,} parameters trainable, {accum} micro-batch(es) of {t.micro_batch_size} per step")

    groups = param_groups(model, config.optimizer.weight_decay)
    optimizer = strategy.make_optimizer(strip_names(groups), config.optimizer)
    model, optimizer, scheduler, _ = strategy.boost(model, optimizer, scheduler_factory(config.schedule, t.max_steps))
    mask_dtype = _mask_dtype(strategy, hf_model)
    if config.model.gradient_checkpointing and not getattr(hf_model, "is_gradient_checkpointing", False):
        raise CptError("gradient checkpointing was requested but the model does not have it enabled")

    state = TrainState()
    if resume is not None:
        saved = load_checkpoint(Path(resume), strategy, model, optimizer, scheduler,
                                new_data=config.checkpointing.new_data)
        sampler.load_state_dict(saved["sampler"])
        state = TrainState(step=int(saved["step"]), micro_batches=int(saved["micro_batches"]),
                           tokens_seen=int(saved["tokens_seen"]), loss_tokens=int(saved.get("loss_tokens", 0)),
                           sampler=saved["sampler"])
        if scheduler is not None and scheduler.last_epoch != state.step:
            raise CptError(f"{resume}: LR scheduler is at update {scheduler.last_epoch}, trainer state at step {state.step}")
        _log(f"resumed from {resume} at step {state.step} (epoch {sampler.epoch}, micro-batch {sampler.position})")
    tokens_at_start = state.tokens_seen

    loggers = []
    if rank == 0:
        # resumed: drop what a killed run logged past the checkpoint; fresh (only reachable
        # with an old metrics.jsonl through --resume auto finding no checkpoint): drop all
        truncate_jsonl(out / "logs" / "metrics.jsonl", state.step if resume is not None else 0)
        loggers = make_loggers(pm, config.logging.loggers, out / "logs", config)
    if config.eval.budget:  # parsed and validated now; acting on it comes with the Trainer (issue 13)
        _log(f"eval.budget {config.eval.budget} (on_budget {config.eval.on_budget}) is not acted on by this "
             "training loop yet: compare eval/NAME/bpb with step 0 in cpt report")
    progress = Progress(t.max_steps, state.step, config.logging.progress and rank == 0)
    loader = Loader(data, sampler, pad_id, block_mask=block, mask_dtype=mask_dtype)
    start_time = time.time()
    step_time = 0.0  # sum of step wall times (forward/backward/optimizer), no eval/checkpoint
    metrics: dict = {}
    eval_metrics: dict = {}
    model.train()
    try:
        while state.step < t.max_steps:
            step_start = time.time()
            model.train()  # eval switches to eval mode; checkpointing and noise need train mode
            batches, epoch_end = [], False
            for _ in range(accum):
                batch, ended = loader.next()
                epoch_end = epoch_end or ended
                batches.append(batch)
            local = [sum(count_label_tokens(b["labels"]) for b in batches),
                     sum(int(b["lengths"].sum()) for b in batches)]
            n_tokens, n_input = _all_reduce_sum([float(local[0]), float(local[1])], strategy.device, strategy.dp_group)
            normaliser = strategy.dp_size / n_tokens if n_tokens > 0 else 0.0
            lr = scheduler.get_last_lr()[0] if scheduler is not None else config.optimizer.lr
            loss_sum = 0.0
            for i, batch in enumerate(batches):
                batch = {k: v.to(strategy.device) for k, v in batch.items()}
                hf_model.cpt_real_lengths = batch["lengths"]
                loss_sum += float(strategy.forward_backward(model, optimizer, batch, normaliser, sync=i == accum - 1))
            grad_norm = strategy.clip_and_step(optimizer, config.optimizer.grad_clip)
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad()
            (loss_total,) = _all_reduce_sum([loss_sum], strategy.device, strategy.dp_group)
            state.step += 1
            state.micro_batches += accum
            state.tokens_seen += int(n_input)
            state.loss_tokens += int(n_tokens)
            state.sampler = sampler.state_dict()
            dt = time.time() - step_start
            step_time += dt
            metrics = {
                "loss": loss_total / n_tokens if n_tokens else float("nan"),
                "lr": lr, "grad_norm": grad_norm,
                "tokens_per_second": n_input / dt if dt > 0 else 0.0,
                "tokens_seen": state.tokens_seen, "epoch": sampler.epoch,
                "peak_memory_mb": peak_memory_mb(strategy.device),
            }
            if epoch_end:
                metrics["epoch_end"] = 1
            final = state.step == t.max_steps
            if (t.eval_every and state.step % t.eval_every == 0) or final:
                eval_metrics = evaluate(strategy, model, hf_model, config, pad_id, block, mask_dtype)
                metrics.update(eval_metrics)
            if rank == 0 and (state.step % max(1, config.logging.log_every) == 0 or final or "eval_loss" in metrics):
                for lg in loggers:
                    lg.log(metrics, state.step)
            progress.update(state.step, f"loss {metrics['loss']:.4f}")
            se = config.checkpointing.save_every
            if (se and state.step % se == 0) or final:
                save_checkpoint(out, state.step, strategy, model, optimizer, scheduler, state.to_dict(), config,
                                config.checkpointing.keep_last, hf_model=hf_model)
    finally:
        progress.close()
        for lg in loggers:
            lg.close()

    # export OUT/final (every rank unwraps; rank 0 writes)
    final_dir = out / "final"
    module = strategy.unwrap(model)
    if rank == 0:
        import shutil

        if final_dir.exists():
            shutil.rmtree(final_dir)
        call_provider(pm, "cpt_save", model=module, out_dir=final_dir, config=config, tokenizer=tokenizer)
    if noise is not None:
        noise.remove()
    wall = time.time() - t0
    trained = state.tokens_seen
    summary = {
        "steps": state.step,
        "resumed_from": str(resume) if resume is not None else None,
        "tokens_trained": trained,
        "tokens_this_run": trained - tokens_at_start,
        "wall_time_s": round(wall, 3),
        "train_time_s": round(time.time() - start_time, 3),
        "step_time_s": round(step_time, 3),
        "tokens_per_second": 0.0,
        "wall_tokens_per_second": 0.0,
        "final_loss": metrics.get("loss"),
        "final_eval_loss": eval_metrics.get("eval_loss"),
        "final_eval_perplexity": eval_metrics.get("eval_perplexity"),
        "final_eval_bpb": eval_metrics.get("eval_bpb"),
        "final_eval": {name: {k: eval_metrics[f"eval/{name}/{k}"] for k in ("loss", "perplexity", "bpb", "tokens")
                              if f"eval/{name}/{k}" in eval_metrics} for name in config.data.eval},
        "world_size": world, "strategy": strategy.name, "final_dir": str(final_dir),
    }
    if step_time > 0:  # training steps only
        summary["tokens_per_second"] = summary["tokens_this_run"] / step_time
    if wall > 0:  # whole run: setup, eval, checkpoints and export included
        summary["wall_tokens_per_second"] = summary["tokens_this_run"] / wall
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        _log(f"done: {state.step} steps, final loss {summary['final_loss']}, export in {final_dir}")
    return summary
