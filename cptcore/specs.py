"""Frozen spec objects that plugins return from the ``cpt_register_*`` hooks.

Specs are plain frozen dataclasses holding names, descriptions, an optional options
class and *callables*. They never import torch, transformers or colossalai at module
level: heavy imports happen inside the callables (``build``, ``attach``, ``render``...),
so listing plugins stays fast.

Every spec has ``name`` (what the user types), ``aliases`` (other accepted names) and
``description`` (one line shown by the listing commands). ``options`` is an optional
dataclass type; the user's options for the plugin (config section or ``--set
section.key=value``) are validated against it by :func:`cptcore.config.parse_options`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence


@dataclass(frozen=True)
class Capabilities:
    """What a strategy (for given options) can do, declared once on its spec and
    checked once, by :func:`cptcore.train.plan.precheck`, before any heavy work.

    Attributes:
        lora, noise, freeze: trains LoRA adapters / embedding noise / ``--freeze``.
        dora: trains DoRA (``lora.use_dora``) where ``lora`` is true.
        cpu: runs without CUDA.
        pipeline: pipeline parallel (the step goes through the 1F1B schedule).
        sharded_checkpoint: each rank writes its own shard of the state.
        why_not: feature name (``"lora"``, ``"dora"``, ``"noise"``, ``"freeze"``, ``"cpu"``) ->
            the one-line reason shown when the user asks for it anyway.
    """

    lora: bool = True
    dora: bool = True  # lora.use_dora (weight-decomposed LoRA) on top of LoRA
    noise: bool = True
    freeze: bool = True
    cpu: bool = True
    pipeline: bool = False
    sharded_checkpoint: bool = False
    why_not: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StrategySpec:
    """A parallel training strategy (a ColossalAI Booster plugin and how to drive it).

    Attributes:
        name: registry name, e.g. ``"ddp"``, ``"zero2"``, ``"hybrid3d"``.
        build: ``build(options, config) -> Strategy`` (the protocol in
            :mod:`cptcore.train.strategy`; ColossalAI plugins return a
            ``BoosterStrategy``); called once per process after the process group
            exists. ``options`` is an instance of ``options`` (or ``None``), ``config``
            the resolved :class:`cptcore.config.RunConfig`.
        capabilities: a :class:`Capabilities`, or ``f(options) -> Capabilities`` when
            they depend on the options (``hybrid3d`` with ``pp_size > 1``).
        options: dataclass of the strategy's options (ColossalAI argument names where
            one exists: ``tp_size``, ``pp_size``, ``zero_stage``, ``cpu_offload``...).
        validate: ``validate(options, config, world_size, model_config) -> None``: pure
            arithmetic, called before any process group exists; raises
            :class:`cptcore.errors.ConfigError` with a one-line message.
            ``model_config`` is a mapping with ``num_attention_heads``,
            ``num_key_value_heads``, ``num_hidden_layers`` (or ``None`` when unknown).
        preset: option values applied before the user's (how ``zero2_cpu`` is ``zero2``
            with ``cpu_offload=True``).
    """

    name: str
    build: Callable[..., Any]
    description: str = ""
    options: type | None = None
    validate: Callable[..., None] | None = None
    aliases: tuple[str, ...] = ()
    preset: Mapping[str, Any] = field(default_factory=dict)
    capabilities: Any = Capabilities()

    def capabilities_for(self, options: Any) -> Capabilities:
        """:attr:`capabilities` resolved for ``options``."""
        caps = self.capabilities
        return caps(options) if callable(caps) else caps


@dataclass(frozen=True)
class NoiseSpec:
    """Noise added to the input embeddings while training (e.g. NEFTune).

    Attributes:
        name: registry name, e.g. ``"neftune"``.
        attach: ``attach(model, options) -> handle``; registers whatever hook adds the
            noise and returns an object with ``remove()`` that detaches it. The noise
            must be active only when ``model.training`` is true.
        options: dataclass of options (e.g. ``alpha: float = 5.0``).
        batch_fields: the per-row facts the noise needs, as batch keys (e.g.
            ``("position_ids", "lengths")``). Before every forward the Trainer calls
            ``handle.observe({key: batch[key] for key in batch_fields})`` with those
            tensors (``[micro_batch, seq]`` / ``[micro_batch]`` int64, on the device);
            nothing is set on the model.
    """

    name: str
    attach: Callable[..., Any]
    description: str = ""
    options: type | None = None
    aliases: tuple[str, ...] = ()
    batch_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class ObjectiveSpec:
    """A training objective: what a micro-batch's loss is (``training.objective``,
    ``--objective NAME``; built-in ``causal_lm``).

    Attributes:
        name: registry name, e.g. ``"causal_lm"``.
        loss: ``loss(logits, batch, options) -> (loss_sum, token_count)``. ``logits``
            ``[micro_batch, seq, vocab]`` (the model's dtype), ``batch`` the collated
            tensors on the device; returns a 0-dim fp32 tensor (the *sum* of per-token
            losses in nats, differentiable) and the number of tokens it is summed over
            (int). The Trainer divides by the token count of the whole accumulated
            batch over all ranks (token-weighted), so the objective never averages.
        count: ``count(batch) -> int``: the token count ``loss`` will return, computed
            before the forward (the Trainer all-reduces it before the first backward).
        columns: the prepared-data columns it reads (checked against the folders).
        collate: ``collate(rows, pad_id, block_mask, mask_dtype) -> batch`` (default
            :func:`cptcore.train.data.collate`) or ``None`` for the default.
        options: dataclass of options (``--set training.objective_options.KEY=VALUE``).
        loss_chunk_tokens: ``loss_chunk_tokens(options) -> int | None``: how many tokens
            (rows x positions) of fp32 ``[tokens, vocab]`` temporaries ``loss`` holds at
            once, read by the memory estimate of ``cpt train --dry-run``
            (:func:`cptcore.train.estimate.logits_bytes`). ``None`` (the default, or
            returned): the loss materialises fp32 logits of the whole micro-batch, the
            conservative estimate. ``causal_lm`` returns its ``chunk_tokens`` option.
    """

    name: str
    loss: Callable[..., Any]
    count: Callable[..., int]
    description: str = ""
    columns: tuple[str, ...] = ("input_ids", "labels", "position_ids")
    collate: Callable[..., Any] | None = None
    options: type | None = None
    aliases: tuple[str, ...] = ()
    loss_chunk_tokens: Callable[[Any], int | None] | None = None

    def chunk_tokens_for(self, options: Any) -> int | None:
        """:attr:`loss_chunk_tokens` for ``options`` (``None`` when not declared)."""
        return self.loss_chunk_tokens(options) if self.loss_chunk_tokens is not None else None


@dataclass(frozen=True)
class PackerSpec:
    """Packs tokenized documents into fixed-length training rows.

    Attributes:
        name: registry name, e.g. ``"splice"``, ``"greedy"``, ``"bfd"``.
        make: ``make(max_length, pad_id, options) -> packer``; ``options`` is an instance
            of ``options`` (or ``None``). A packer has ``add(doc) -> list[Row]`` and
            ``flush() -> list[Row]`` (called once at the end). ``Doc`` (``input_ids``,
            ``labels``: int32 ``[n]``) and ``Row`` (``input_ids``, ``labels``,
            ``position_ids``: int32 ``[length]``, ``n_pad``: trailing pad tokens) are in
            :mod:`cptcore.data.packing`; rows are at most ``max_length`` long, padding
            uses ``pad_id`` with label -100, positions restart at 0 at every document
            start (``cptcore.data.packing.build_row`` does all that). Documents longer
            than ``max_length`` reach a packer only when ``splits_documents`` is True.
        splits_documents: True when a document may span two rows (``splice``).
        options: dataclass of options (``--set packer.KEY=VALUE``).
    """

    name: str
    make: Callable[..., Any]
    description: str = ""
    splits_documents: bool = False
    options: type | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered conversation: its text and whether it carries loss."""

    text: str
    train: bool = False


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template: renders a conversation into text segments with loss flags.

    Attributes:
        name: registry name, e.g. ``"chatml"``, ``"llama3"``.
        render: ``render(messages, *, tokenizer, options) -> list[Segment]``.
            ``messages`` is a sequence of ``{"role": "system"|"user"|"assistant",
            "content": str}``. The concatenation of the segments' text is the full
            rendered conversation (special tokens written as text, e.g. ``"<|im_end|>"``);
            segments with ``train=True`` are the assistant's content and its end-of-turn
            token. Label masks are computed from the tokenizer's character offsets of
            these segments, never by tokenizing fragments separately.
        options: dataclass of template knobs (e.g. a default system prompt).
        special_tokens: every special token the template writes as literal text (e.g.
            ``("<|im_start|>", "<|im_end|>")``). Before any conversation is encoded, each
            must be one token of the tokenizer (encoding it alone gives one id); a
            tokenizer lacking one is refused with a :class:`cptcore.errors.ConfigError`
            naming it (else ``"</s>"`` would be split into ``'</', 's', '>'`` and trained as
            the end of turn). Tokens taken from the tokenizer itself
            (``tokenizer.eos_token``) need not be listed.
    """

    name: str
    render: Callable[..., list[Segment]]
    description: str = ""
    options: type | None = None
    aliases: tuple[str, ...] = ()
    special_tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoggerSpec:
    """A metric logger (TensorBoard, JSONL, ...).

    Attributes:
        name: registry name, e.g. ``"tensorboard"``.
        create: ``create(log_dir: pathlib.Path, config, options) -> logger``; a logger
            has ``log(metrics: dict[str, float], step: int)`` and ``close()``. Called on
            rank 0 only. ``options`` is an instance of ``options`` built from
            ``logging.options.NAME`` (or ``None``). A two-argument ``create(log_dir,
            config)`` (no options) is accepted too.
        options: dataclass of the logger's options (``--set logging.options.NAME.KEY=V``).
    """

    name: str
    create: Callable[..., Any]
    description: str = ""
    options: type | None = None
    aliases: tuple[str, ...] = ()


# ---------------------------------------------------------------- embedding inits (issue 15)


@dataclass(frozen=True)
class EmbeddingInitSpec:
    """How the rows of new token ids are initialised by ``cpt model resize --init NAME``.

    Attributes:
        name: registry name, e.g. ``"mean"``, ``"multivariate"``.
        init: ``init(request) -> tensor``; ``request`` is a
            :class:`cptcore.model.embedding_init.InitRequest` (the old rows of one matrix
            ``[old_rows, hidden]``, the new tokens' sub-token ids, a seeded
            ``torch.Generator``, the options). Returns the new rows ``[n_new, hidden]``
            (any float dtype; cast to the matrix's). Called once for the input embedding
            and, when untied, once for the output embedding.
        options: dataclass of options (``--init-option KEY=VALUE``).
        warning: printed whenever the method is used (e.g. ``zero``: comparison only).
    """

    name: str
    init: Callable[..., Any]
    description: str = ""
    options: type | None = None
    aliases: tuple[str, ...] = ()
    warning: str = ""


@dataclass(frozen=True)
class FilterSpec:
    """A ``cpt clean`` filter: decides which documents are removed, and why.

    Attributes:
        name: registry name (``--filter NAME``), e.g. ``"exact"``, ``"quality"``; the
            reason documents it removes are counted under in ``stats.json``.
        make: ``make(options, context) -> filter``, called once in the driver; the
            filter object must be picklable (it is sent to worker processes and Ray
            tasks; load heavy resources lazily inside it). ``options`` is an instance of
            ``options`` (or ``None``); ``context`` a
            :class:`cptcore.clean.filters.FilterContext` (seed, ``scratch`` folder for on-disk indexes, their cache size).
        stage: ``"document"``: the filter has ``check(text: str) -> str | None``
            (``None`` keeps the document, else the removal detail, ``"RULE (detail)"``),
            a pure function run in the workers. ``"dedup"``: the filter has
            ``signature(text) -> numpy.ndarray`` (fixed shape and dtype, run in the
            workers), ``check(signature, key: int) -> str | None`` (run in the driver
            in input order; only looks: compares with the documents remembered so far)
            and ``add(signature, key)`` (remember: called by the driver, in input order,
            for every document the whole chain keeps, and when a restarted run replays
            the signatures of the documents kept before it was killed; a document a
            later filter removes is never added, so a resumed run decides as an
            uninterrupted one); optionally
            ``close()``, called once when the run ends (the built-in ``exact`` and
            ``near`` delete their on-disk index, :mod:`cptcore.clean.index`, there).
        options: dataclass of thresholds (``--set NAME.KEY=VALUE``).
    """

    name: str
    make: Callable[..., Any]
    description: str = ""
    stage: str = "document"
    options: type | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExecutorSpec:
    """Where ``cpt prepare`` / ``cpt clean`` run their chunk jobs (``--executor NAME``).

    Attributes:
        name: registry name, e.g. ``"local"``, ``"ray"``.
        make: ``make(num_proc, fn, args, address) -> executor``: runs ``fn(*args, items)``
            per chunk; the executor has ``num_proc`` (jobs in flight), ``submit(items)``
            returning a future with ``get()``, and ``close()``. ``address`` is
            ``--ray-address`` (``None`` when not given; an executor that takes none
            raises :class:`cptcore.errors.ConfigError` for one). Results are consumed in
            submission order, so an executor never changes the output.
    """

    name: str
    make: Callable[..., Any]
    description: str = ""
    options: type | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScheduleSpec:
    """A learning-rate schedule (``schedule.name``; ``cpt schedules``).

    Attributes:
        name: registry name, e.g. ``"cosine"``, ``"wsd"``.
        build: ``build(options, *, warmup_steps, max_steps, min_lr_ratio, **more) ->
            f(step) -> float``: ``f`` gives the multiplier of the peak LR
            (``optimizer.lr``) for the update with 0-based index ``step`` (``step = 0`` is
            the first update; ``LambdaLR`` multiplies it in). Arguments come by keyword
            (accept ``**more``: later versions may pass more); ``max_steps`` is the run's
            (or the stage's) optimizer steps as resolved by the precheck (from
            ``training.max_steps``, ``epochs`` or ``max_tokens``). Must be torch-free and
            deterministic; raises :class:`cptcore.errors.ConfigError` (one line naming
            the ``schedule.*`` key) for values it cannot honour. Called once by the
            precheck (to validate) and once per Trainer.
        options: dataclass of the schedule's own options (``schedule.KEY`` or
            ``schedule.options.KEY``; ``warmup_steps`` and ``min_lr_ratio`` are common
            keys of the section, not options).
    """

    name: str
    build: Callable[..., Callable[[int], float]]
    description: str = ""
    options: type | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegistryKind:
    """How one registry is built: its hook, what it holds, and its listing command."""

    key: str  # e.g. "strategies"
    hook: str  # e.g. "cpt_register_strategies"
    singular: str  # e.g. "strategy" (used in "unknown strategy 'x'")
    command: str  # listing command, e.g. "strategies"


REGISTRY_KINDS: Sequence[RegistryKind] = (
    RegistryKind("strategies", "cpt_register_strategies", "strategy", "strategies"),
    RegistryKind("noise", "cpt_register_noise", "noise", "noise"),
    RegistryKind("packers", "cpt_register_packers", "packer", "packers"),
    RegistryKind("templates", "cpt_register_chat_templates", "chat template", "templates"),
    RegistryKind("loggers", "cpt_register_loggers", "logger", "loggers"),
    RegistryKind("filters", "cpt_register_filters", "filter", "filters"),  # cpt clean
    RegistryKind("executors", "cpt_register_executors", "executor", "executors"),  # cpt prepare/clean --executor
    RegistryKind("embedding_inits", "cpt_register_embedding_inits", "embedding init", "embedding-inits"),
    RegistryKind("objectives", "cpt_register_objectives", "objective", "objectives"),
    RegistryKind("schedules", "cpt_register_schedules", "schedule", "schedules"),
)
