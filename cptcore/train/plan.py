"""One validation pass: :func:`precheck` turns a config into a :class:`Plan`.

Every check that needs no process group and no weights runs here, once, in this order:
model path, data folders, numbers (steps, batch, schedule, optimizer, precision), the
strategy (options, layout for the world size, capabilities against LoRA / noise /
freeze / CPU), noise, objective and logger options, the tokenizer against every
manifest, batch arithmetic (data >= one global micro-batch, accumulation <= an epoch),
then the resume checkpoint (or a fresh ``OUT``). The :class:`~cptcore.train.trainer.Trainer`
consumes the plan and checks none of it again; ``cpt train --dry-run`` runs the same
function and prints the plan. Torch-free apart from the tokenizer (transformers), which
is loaded only when there is data to check it against.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..config import RunConfig
from ..contract import Manifest
from ..data.manifest import check_labelled
from ..errors import ConfigError, DataError
from ..units import parse_shard_size
from ..model.load import check_model_path, choose_attention, compute_dtype, load_tokenizer
from ..recipes import trainable
from ..specs import Capabilities
from .build import FREEZE_CHOICES, accumulation_steps, model_config_dict
from .checkpoint import list_checkpoints, resolve_resume, validate_checkpoint
from .resume_check import check_resume
from .runlock import ensure_writable
from .data import Source, check_sources, parse_source, seq_length, split_source
from .length import RunLength, check_length_keys, resolve_length
from .optim import Schedule, resolve_schedule
from .parallel import Layout, check_combination, make_layout

if TYPE_CHECKING:
    from ..plugins import CptPluginManager


@dataclass(frozen=True)
class Choice:
    """A registry choice: the spec and its parsed options (``None`` when it has none)."""

    spec: Any
    options: Any = None

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Plan:
    """What :func:`precheck` resolved; the Trainer's only input besides the plugin manager.

    Attributes:
        config: the run config with absolute input paths (:func:`absolute_inputs`).
        world_size: ranks the run has (``--nproc-per-node x --nnodes`` or ``$WORLD_SIZE``).
        strategy, objective: the chosen specs with parsed options; ``noise`` likewise
            or ``None``; ``loggers`` one per ``logging.loggers`` entry.
        capabilities: the strategy's, for its options.
        layout: the process layout (dp x tp x pp x sp) for ``world_size``.
        tokenizer: loaded once here (``None`` when there is no data to check).
        train, eval: the prepared folders; ``manifests`` / ``eval_manifests`` theirs.
        seq_len: the longest ``max_length`` the training manifests name (``None``: unknown).
        accumulation: micro-batches per optimizer step.
        resume: the checkpoint to resume from and ``resume_state`` its trainer state.
        schedule: the ``schedule`` section resolved through the schedule registry.
        length: the run's length; ``config.training.max_steps`` holds its steps (with
            ``epochs``/``max_tokens`` cleared, so the written ``config.yaml`` stays valid).
    """

    config: RunConfig
    world_size: int
    strategy: Choice
    capabilities: Capabilities
    layout: Layout
    objective: Choice
    noise: Choice | None = None
    loggers: tuple[Choice, ...] = ()
    tokenizer: Any = field(default=None, repr=False)
    train: tuple[Source, ...] = ()
    eval: tuple[Source, ...] = ()
    eval_names: tuple[str, ...] = ()  # data.eval names, one per eval folder
    manifests: tuple[Manifest, ...] = ()
    eval_manifests: tuple[Manifest, ...] = ()
    seq_len: int | None = None
    accumulation: int = 1
    resume: Path | None = None
    resume_state: Mapping[str, Any] | None = None
    schedule: Schedule | None = None  # the resolved schedule section (scheduler_factory's input)
    length: RunLength | None = None  # how config.training.max_steps was resolved

    @property
    def loss_chunk_tokens(self) -> int | None:
        """Tokens per chunk of the objective's loss, as its spec declares for its options
        (``ObjectiveSpec.loss_chunk_tokens``; ``None``: the whole micro-batch at once):
        what the memory estimate counts."""
        return self.objective.spec.chunk_tokens_for(self.objective.options)

    @property
    def pad_id(self) -> int | None:
        """The training data's pad id (the first manifest's, else the tokenizer's)."""
        if self.manifests and self.manifests[0].pad_id is not None:
            return self.manifests[0].pad_id
        return getattr(self.tokenizer, "pad_token_id", None)

    def describe(self) -> list[str]:
        """A few lines for ``--dry-run``: what will run, where from, how often."""
        c = self.config
        t = c.training
        start = f"resume {self.resume} (step {self.resume_state['step']})" if self.resume_state else f"fresh run in {t.out_dir}"
        lines = [
            f"data:     {len(self.train)} training folder(s), {len(self.eval)} eval folder(s)"
            + (f", rows {sum(m.rows or 0 for m in self.manifests):,}" if self.manifests else " (none given)"),
            f"steps:    {t.max_steps} optimizer steps of {self.accumulation} micro-batch(es) x "
            f"{t.micro_batch_size} row(s) x dp {self.layout.dp}"
            + (f" ({self.length.describe()})" if self.length else "") + f"; schedule {c.schedule.name}, "
            f"warm-up {c.schedule.warmup_steps}, lr {c.optimizer.lr:g}",
            f"run:      {start}; objective {self.objective.name}"
            + (f"; noise {self.noise.name}" if self.noise else "")
            + f"; loggers {', '.join(x.name for x in self.loggers) or 'none'}",
        ]
        return lines


def log(msg: str) -> None:
    """``cpt train: msg`` on stderr, rank 0 only."""
    if os.environ.get("RANK", "0") in ("", "0"):
        print(f"cpt train: {msg}", file=sys.stderr, flush=True)


def world_size_default(world_size: int | None) -> int:
    return world_size or int(os.environ.get("WORLD_SIZE", "1"))


def layout_for(name: str, options: Any, world: int) -> Layout:
    """The layout a strategy's options give ``world`` ranks (data parallel unless the
    options carry ``tp_size``/``pp_size``/``sp_size``)."""
    tp = getattr(options, "tp_size", 1) or 1
    pp = getattr(options, "pp_size", 1) or 1
    sp = getattr(options, "sp_size", None)
    mode = getattr(options, "sequence_parallelism_mode", None)
    return make_layout(name, world, tp=tp, pp=pp, sp=sp, sp_mode=mode)


MAX_SEED = 2**32 - 1  # numpy.random.seed takes [0, 2**32 - 1] (cptcore.train.trainer seeds it)


def check_numbers(config: RunConfig) -> None:
    """Steps, batch, cadence, freeze, schedule, optimizer and precision values.

    Raises:
        ConfigError: one line naming the key.
    """
    t = config.training
    check_length_keys(config)
    for key in ("eval_every", "micro_batch_size"):
        if getattr(t, key) < (1 if key == "micro_batch_size" else 0):
            raise ConfigError(f"training.{key} has an invalid value {getattr(t, key)}")
    if config.checkpointing.save_every < 0:
        raise ConfigError("checkpointing.save_every must be >= 0")
    if not 0 <= t.seed <= MAX_SEED:  # np.random.seed's range (a traceback in the Trainer before)
        raise ConfigError(f"training.seed must be in [0, {MAX_SEED}], got {t.seed}")
    if t.freeze not in FREEZE_CHOICES:
        raise ConfigError(f"training.freeze: unknown '{t.freeze}' (valid: {', '.join(FREEZE_CHOICES)})")
    if config.lora.enabled and t.freeze != "none":
        raise ConfigError("--freeze non-embeddings and lora.enabled exclude each other (use lora.train_embeddings)")
    trainable.check(config)  # training.trainable (new_rows: its original row count)
    parse_shard_size(t.max_shard_size, "training.max_shard_size")
    check_optimizer(config.optimizer)
    check_peak_flops(t.peak_flops)
    check_lora(config.lora)
    if config.strategy.precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"strategy.precision must be fp32, bf16 or fp16, got '{config.strategy.precision}'")
    # FA2 takes fp16/bf16 only: auto picks SDPA for fp32; a forced FA2 that cannot run is refused here
    choose_attention(config.model.attn_implementation, compute_dtype(config.model.dtype, config.strategy.precision))


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


def check_lora(lora: Any) -> None:
    """``lora.*`` values peft would reject only after the model is loaded (with a
    traceback), and the switches that do nothing without ``lora.enabled``.

    Raises:
        ConfigError: ``use_dora``/``use_rslora`` true while ``enabled`` is false; with
            ``enabled``: ``r`` not an integer >= 1, ``alpha`` not > 0 and finite,
            ``dropout`` not in [0, 1).
    """
    if not lora.enabled:
        on = [k for k in ("use_dora", "use_rslora") if getattr(lora, k)]
        if on:
            raise ConfigError(f"lora.{on[0]}=true does nothing without lora.enabled=true: set lora.enabled=true "
                              f"or drop lora.{on[0]}")
        return
    if isinstance(lora.r, bool) or not isinstance(lora.r, int) or lora.r < 1:
        raise ConfigError(f"lora.r must be an integer >= 1, got {lora.r!r}")
    if not (lora.alpha > 0 and math.isfinite(lora.alpha)):
        raise ConfigError(f"lora.alpha must be a positive finite number, got {lora.alpha}")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {lora.dropout}")


def check_peak_flops(value: Any) -> None:
    """``training.peak_flops``: ``None`` or a positive finite FLOP/s figure (MFU)."""
    if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                  and math.isfinite(value) and value > 0):
        raise ConfigError(f"training.peak_flops must be a positive FLOP/s figure (e.g. 9.89e14), got {value!r}")


def check_capabilities(name: str, caps: Capabilities, config: RunConfig) -> None:
    """Refuse, in one line, what the strategy declared it cannot do.

    Raises:
        ConfigError: ``NAME: LoRA is not supported: REASON`` (likewise embedding noise,
            ``training.freeze``; :func:`cptcore.train.parallel.check_combination`), or
            ``NAME: REASON`` for a GPU-only strategy without CUDA.
    """
    refuse = {key: caps.why_not.get(key, "use 'ddp' or disable it")
              for key in ("lora", "dora", "noise", "freeze") if not getattr(caps, key)}
    check_combination(name, lora=config.lora.enabled, dora=config.lora.enabled and config.lora.use_dora,
                      noise=bool(config.noise.name), freeze=trainable.restricts(config), refuse=refuse)
    if not caps.cpu:
        import torch  # only for strategies that declared they need CUDA

        if not torch.cuda.is_available():
            raise ConfigError(f"{name}: {caps.why_not.get('cpu', 'needs CUDA')}")


def check_batches(rows: Sequence[int], weights: Sequence[float], micro_batch_size: int, dp_size: int,
                  accumulation: int) -> int:
    """Micro-batches per rank per epoch of the mixed data (the arithmetic of
    :meth:`cptcore.train.data.MixedSampler.plan`), checked against one step.

    Raises:
        ConfigError: the data is smaller than one global micro-batch, or one step
            accumulates more micro-batches than an epoch has.
    """
    total, wsum = sum(rows), sum(weights)
    planned = sum(int(round(total * w / wsum)) for w in weights)
    per_epoch = planned // (dp_size * micro_batch_size)
    if per_epoch < 1:
        raise ConfigError(f"the training data ({total} rows) is smaller than one global micro-batch "
                          f"({micro_batch_size} x {dp_size} ranks)")
    if accumulation > per_epoch:
        raise ConfigError(f"accumulation ({accumulation} micro-batches per step) is larger than the data "
                          f"({per_epoch} micro-batches per rank per epoch)")
    return per_epoch


def check_fresh_out(out_dir: str | Path) -> None:
    """Refuse to start a fresh run in a folder that holds another run: its
    ``final/`` would be replaced, its ``metrics.jsonl`` appended to, and a later
    ``--resume auto`` would pick up the old run's checkpoints.

    Raises:
        ConfigError: ``out_dir`` holds ``summary.json``, ``final/``,
            ``logs/metrics.jsonl`` or a ``checkpoints/step-N``.
    """
    out = Path(out_dir)
    found = [name for name in ("summary.json", "final", "logs/metrics.jsonl") if (out / name).exists()]
    found += [f"checkpoints/{p.name}" for p in list_checkpoints(out)[-1:]]
    if found:
        raise ConfigError(
            f"{out} already holds a run ({', '.join(found)}): continue it with --resume auto, "
            "or choose another --out (or delete the folder)"
        )


def absolute_inputs(config: RunConfig) -> RunConfig:
    """``config`` with ``model.path``, ``model.tokenizer`` and every ``data.train``/
    ``data.eval`` folder made absolute (weights kept), so the ``config.yaml`` written
    into ``OUT`` and every checkpoint works from any directory (``cpt export``,
    ``--resume PATH``); relative paths are otherwise relative to where ``cpt train`` ran.
    """
    def spec(value: str) -> str:
        path = split_source(value)[0]  # the path as written; the suffix (weight, norepeat) is kept
        if Path(path).is_absolute():
            return value
        return os.path.abspath(path) + value[len(path):]

    model = config.model
    model = dataclasses.replace(
        model,
        path=os.path.abspath(model.path) if model.path else model.path,
        tokenizer=os.path.abspath(model.tokenizer) if model.tokenizer else model.tokenizer,
    )
    data = dataclasses.replace(config.data, train=[spec(v) for v in config.data.train], eval={name: spec(v) for name, v in config.data.eval.items()},
                               eval_mc={name: os.path.abspath(v) for name, v in config.data.eval_mc.items()})
    return dataclasses.replace(config, model=model, data=data)


def validate_strategy(config: RunConfig, pm: "CptPluginManager", world_size: int | None = None) -> tuple[Any, Any]:
    """The chosen strategy's spec and options (preset under the user's), after its
    pure-arithmetic ``validate`` for ``world_size`` ranks and its capabilities check.

    Raises:
        RegistryError / ConfigError: unknown strategy, bad option, impossible layout,
            refused combination.
    """
    spec, options = pm.registry("strategies").resolve(config.strategy.name, config.strategy.options,
                                                      config=config, section="strategy")
    if spec.validate is not None:
        spec.validate(options, config, world_size_default(world_size), model_config_dict(config.model.path))
    check_capabilities(spec.name, spec.capabilities_for(options), config)
    return spec, options


def resolve_plugins(config: RunConfig, pm: "CptPluginManager", world: int) -> dict[str, Any]:
    """Strategy (:func:`validate_strategy`), noise, objective and loggers, each through
    its registry's :meth:`~cptcore.registry.Registry.resolve`.

    Raises:
        RegistryError / ConfigError: unknown name, bad option, impossible layout,
            refused combination, logger options for a logger not in use.
    """
    spec, options = validate_strategy(config, pm, world)
    caps = spec.capabilities_for(options)
    noise = None
    if config.noise.name:
        noise = Choice(*pm.registry("noise").resolve(config.noise.name, config.noise.options, config=config, section="noise"))
    objective = Choice(*pm.registry("objectives").resolve(
        config.training.objective, config.training.objective_options, config=config,
        section="training.objective_options"))
    loggers = tuple(Choice(*pm.registry("loggers").resolve(
        name, config.logging.options.get(name), config=config, section=f"logging.options.{name}"))
        for name in config.logging.loggers)
    extra = sorted(set(config.logging.options) - set(config.logging.loggers))
    if extra:
        raise ConfigError(f"{config.source(f'logging.options.{extra[0]}')}: logging.options.{extra[0]}: "
                          f"'{extra[0]}' is not in logging.loggers ({', '.join(config.logging.loggers) or 'none'})")
    schedule = resolve_schedule(config.schedule, pm.registry("schedules"), config)
    return dict(strategy=Choice(spec, options), capabilities=caps, layout=layout_for(spec.name, options, world),
                noise=noise, objective=objective, loggers=loggers, schedule=schedule)


def precheck(config: RunConfig, pm: "CptPluginManager", world_size: int | None = None, *,
             need_data: bool = True, dry_run: bool = False) -> Plan:
    """Every check that needs no process group and no weights, once; returns the
    :class:`Plan` the Trainer runs (see the module docstring for the order).

    Args:
        world_size: ranks of the run (the launcher passes ``nproc x nnodes``); default
            ``$WORLD_SIZE`` or 1.
        need_data: False for library use on one's own batches and for a dry run
            without ``--data`` (then no data, no tokenizer and no batch arithmetic).
        dry_run: create nothing (``OUT`` is only checked to be creatable).

    Raises:
        CptError subclasses, one line each.
    """
    world = world_size_default(world_size)
    t = config.training
    check_model_path(config.model.path)
    if need_data and not config.data.train:
        raise ConfigError("no training data (use --data PATH[:WEIGHT] or data.train in the config)")
    train = tuple(parse_source(s) for s in config.data.train)
    evals = tuple(parse_source(s) for s in config.data.eval.values())
    for src in (*train, *evals):
        if not src.path.exists():
            raise DataError("prepared data folder not found", path=str(src.path))
    check_numbers(config)
    trainable.check_patterns(config, pm)  # a pattern list: each matches a parameter (meta-device model)
    plugins = resolve_plugins(config, pm, world)
    tokenizer, manifests, eval_manifests = None, (), ()
    if train or evals:
        tokenizer = load_tokenizer(config.model)
        columns = plugins["objective"].spec.columns
        manifests = tuple(check_sources(train, tokenizer, columns))
        eval_manifests = tuple(check_sources(evals, tokenizer, columns))
        for m in (*manifests, *eval_manifests):
            check_labelled(dict(m.raw), m.path)  # no row without a label token (a NaN loss)
    seq = seq_length(manifests)
    dp = plugins["layout"].dp
    accumulation = accumulation_steps(config, seq, dp)
    per_epoch = None
    if manifests and all(m.rows is not None for m in manifests):
        per_epoch = check_batches([m.rows for m in manifests], [s.weight for s in train], t.micro_batch_size, dp,
                                  accumulation)
    length = resolve_length(config, batches_per_epoch=per_epoch, accumulation=accumulation, seq_len=seq, dp=dp)
    t = dataclasses.replace(t, max_steps=length.steps, epochs=None, max_tokens=None)
    config = dataclasses.replace(config, training=t)
    plugins["schedule"].multiplier(length.steps)  # the schedule's own checks, for the resolved length
    resume = resolve_resume(config.checkpointing.resume, t.out_dir, log=log)
    state = None
    if resume is not None:
        state = validate_checkpoint(resume)  # complete, checksums verified
        done = int(state["step"])
        if done > t.max_steps:
            raise ConfigError(
                f"{resume} is at step {done}, past training.max_steps={t.max_steps}: "
                "raise --max-steps to continue it (or export it with cpt export)"
            )
        check_resume(resume, config, pm, world, state=state)  # same layout, same data
    elif config.checkpointing.resume == "auto":
        log(f"--resume auto: no checkpoint in {t.out_dir}/checkpoints, starting fresh")
    else:
        check_fresh_out(t.out_dir)
    ensure_writable(t.out_dir, create=not dry_run)  # one line now, not a traceback after the model loads
    config = absolute_inputs(config)
    train = tuple(parse_source(s) for s in config.data.train)
    evals = tuple(parse_source(s) for s in config.data.eval.values())
    return Plan(config=config, world_size=world, tokenizer=tokenizer, train=train, eval=evals,
                eval_names=tuple(config.data.eval),
                manifests=manifests, eval_manifests=eval_manifests, seq_len=seq, accumulation=accumulation,
                resume=resume, resume_state=state, length=length, **plugins)
