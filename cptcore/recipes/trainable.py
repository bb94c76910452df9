"""Which parameters a run (or a stage of a recipe) trains: ``training.trainable``.

Values (docs/stages.md):

* ``all`` - every parameter (LoRA runs: what the adapters make trainable);
* ``embeddings`` - only the input embedding and output head matrices (the same tensor
  when tied); ``training.freeze: non-embeddings`` is the older name of this set;
* ``new_rows`` - only the rows a vocabulary expansion added, in both matrices: rows
  ``[N:]`` where ``N`` is the original row count, read from the model folder's
  ``resize_report.json`` (``resize.old_rows``, written by ``cpt model resize``) or
  given as ``{new_rows_from: N}``. The embedding matrices keep ``requires_grad``; a
  gradient hook zeroes the gradient of rows ``[:N]`` on every backward, and embeddings
  get no weight decay (refused with ``optimizer.embedding_weight_decay: true``), so
  AdamW's moments for those rows stay exactly 0 and its update is exactly 0: the
  original rows come out bit-identical (tested, tied and untied);
* ``non_embeddings`` - everything except the embedding matrices;
* ``lora`` - the LoRA adapters (``lora.enabled`` is required; ``lora.train_embeddings``
  adds the embedding matrices);
* a list of glob patterns (:func:`fnmatch.fnmatchcase`) over
  ``model.named_parameters()`` names: those parameters only; a pattern matching
  nothing is a one-line error.

Torch-free at import; :func:`apply_trainable` works on the built module.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..plugins import CptPluginManager

SETS = ("all", "embeddings", "new_rows", "non_embeddings", "lora")
#: ``training.freeze`` values and the trainable set each one means
FREEZE_ALIASES = {"none": "all", "non-embeddings": "embeddings"}
#: name fragments of embedding matrices, for wrapped models (peft's modules_to_save copies)
EMBEDDING_NAMES = ("embed_tokens", "lm_head", "embed_out", "wte", "word_embeddings", "output_embeddings")
RESIZE_REPORT = "resize_report.json"  # cptcore.model.resize_check.REPORT_NAME (that module imports torch)


def resolve(config: "RunConfig", where: str = "training.trainable") -> tuple[str, Any]:
    """``(kind, arg)`` of the config's trainable set: ``("patterns", [..])``,
    ``("new_rows", N or None)`` or ``(name, None)``; ``training.freeze`` folded in.

    Raises:
        ConfigError: unknown value, freeze and trainable disagreeing, a bad
            ``new_rows_from``, an empty pattern list.
    """
    value = config.training.trainable
    freeze = config.training.freeze
    if freeze not in FREEZE_ALIASES:
        raise ConfigError(f"training.freeze: unknown '{freeze}' (valid: {', '.join(FREEZE_ALIASES)})")
    if isinstance(value, str) and "," in value:
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, dict):
        if set(value) != {"new_rows_from"}:
            raise ConfigError(f"{where}: a mapping takes only 'new_rows_from', got {sorted(value)}")
        n = value["new_rows_from"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ConfigError(f"{where}: new_rows_from must be an integer >= 0, got {n!r}")
        kind, arg = "new_rows", n
    elif isinstance(value, list):
        if not value or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: a pattern list needs one or more non-empty strings, got {value!r}")
        kind, arg = "patterns", list(value)
    elif value in SETS:
        kind, arg = value, None
    else:
        raise ConfigError(f"{where}: unknown trainable set '{value}' (valid: {', '.join(SETS)}, "
                          "a list of parameter-name patterns, or {new_rows_from: N})")
    alias = FREEZE_ALIASES[freeze]
    if alias != "all":
        if kind not in ("all", alias):
            raise ConfigError(f"training.freeze={freeze} and {where}={value!r} disagree (use only {where})")
        kind = alias
    return kind, arg


def restricts(config: "RunConfig") -> bool:
    """True when the trainable set freezes something the strategy must support
    (the ``freeze`` capability): anything but ``all`` and ``lora``."""
    return resolve(config)[0] not in ("all", "lora")


def new_rows_from(config: "RunConfig", arg: int | None, where: str = "training.trainable") -> int:
    """The original row count for ``new_rows``: ``arg`` when given, else
    ``resize.old_rows`` of ``MODEL/resize_report.json``.

    Raises:
        ConfigError: no record and no ``new_rows_from``, or an unreadable record.
    """
    if arg is not None:
        return arg
    report = Path(config.model.path) / RESIZE_REPORT
    if not report.is_file():
        raise ConfigError(f"{where}: new_rows needs the original row count: {report} is missing (the model was "
                          "not made by cpt model resize); give it as trainable: {new_rows_from: N}")
    try:
        n = json.loads(report.read_text(encoding="utf-8"))["resize"]["old_rows"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{report}: no resize.old_rows ({type(exc).__name__}: {exc})") from None
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ConfigError(f"{report}: resize.old_rows must be an integer >= 0, got {n!r}")
    return n


def check(config: "RunConfig", where: str = "training.trainable") -> tuple[str, Any]:
    """Pure checks for precheck: the set is known, agrees with ``training.freeze`` and
    ``lora.enabled``, ``new_rows`` has its row count and no embedding decay. Returns
    :func:`resolve`'s pair with ``new_rows``'s count filled in.

    Raises:
        ConfigError: one line naming ``where``.
    """
    kind, arg = resolve(config, where)
    if kind == "lora" and not config.lora.enabled:
        raise ConfigError(f"{where}=lora needs lora.enabled: true")
    if config.lora.enabled and kind not in ("all", "lora"):
        raise ConfigError(f"{where}={kind} and lora.enabled exclude each other (use lora.train_embeddings)")
    if kind == "new_rows":
        if config.optimizer.embedding_weight_decay and config.optimizer.weight_decay > 0:
            raise ConfigError(f"{where}=new_rows with optimizer.embedding_weight_decay: true would decay the "
                              "original rows; turn one of them off")
        arg = new_rows_from(config, arg, where)
    return kind, arg


def check_patterns(config: RunConfig, pm: CptPluginManager, where: str = "training.trainable") -> None:
    """For a pattern list: every pattern matches a parameter name of the configured
    model, built on the ``meta`` device (:func:`cptcore.train.dryrun.meta_model`: no
    weights read); for ``new_rows``: the original row count is below the embedding's
    rows. No-op for the other named sets.

    Raises:
        ConfigError: ``WHERE: pattern 'P' matches no parameter name (...)``;
            ``new_rows_from=N leaves no new row ...``.
    """
    import dataclasses

    kind, _ = resolve(config, where)
    if kind == "new_rows":  # the row count against the model's rows, before any stage trains
        from ..train.dryrun import meta_model

        meta_model(config, pm)  # apply_trainable refuses new_rows_from >= rows
        return
    if kind != "patterns":
        return
    from ..train.dryrun import meta_model  # lazy: cycle (train.dryrun -> recipes.stages -> this module)

    plain = dataclasses.replace(config, training=dataclasses.replace(config.training, trainable="all"))
    _match(meta_model(plain, pm), resolve(config, where)[1], where)


def _match(model: Any, patterns: list[str], where: str) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ConfigError(f"{where}: pattern '{pattern}' matches no parameter name "
                              f"(names look like {names[0]!r}, {names[-1]!r})")
    return names


def embedding_parameters(model: Any) -> list[tuple[str, Any]]:
    """``(name, parameter)`` of the input embedding and output head matrices (one entry
    when tied), found by identity (``get_input_embeddings``/``get_output_embeddings``)
    and, for wrapped models, by name (:data:`EMBEDDING_NAMES`)."""
    ids = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        weight = getattr(module, "weight", None)
        if weight is not None:
            ids.add(id(weight))
    out, seen = [], set()
    for name, p in model.named_parameters(remove_duplicate=True):
        if id(p) in seen:
            continue
        if id(p) in ids or (p.ndim == 2 and any(f in name.split(".") or f"{f}." in name for f in EMBEDDING_NAMES)):
            seen.add(id(p))
            out.append((name, p))
    return out


def _zero_rows_hook(n: int):
    def hook(grad: Any) -> Any:
        grad = grad.clone()
        grad[:n] = 0
        return grad
    return hook


def apply_trainable(model: Any, config: "RunConfig") -> int:
    """Set ``requires_grad`` (and, for ``new_rows``, the gradient hooks) on the built
    ``model`` for ``config``'s trainable set (:func:`check` first).

    Returns:
        trainable parameter elements (``new_rows``: the new rows only; tied counted once).

    Raises:
        ConfigError: a pattern matching no parameter name, ``new_rows_from`` not below
            the embedding's row count.
    """
    kind, arg = check(config)
    if kind in ("all", "lora"):
        return _count(model)
    emb = embedding_parameters(model)
    if kind == "non_embeddings":
        for _, p in emb:
            p.requires_grad_(False)
        return _count(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if kind == "patterns":
        _match(model, arg, "training.trainable")
        for name, p in model.named_parameters():
            if any(fnmatch.fnmatchcase(name, pat) for pat in arg):
                p.requires_grad_(True)
        return _count(model)
    for _, p in emb:
        p.requires_grad_(True)
    if kind == "embeddings":
        return _count(model)
    n = arg  # new_rows
    for name, p in emb:
        if n >= p.shape[0]:
            raise ConfigError(f"training.trainable: new_rows_from={n} leaves no new row in {name} "
                              f"({p.shape[0]} rows)")
        p.register_hook(_zero_rows_hook(n))
    return _new_rows_count(emb, n)


def count_trainable(model: Any, config: "RunConfig") -> int:
    """Trainable parameter elements of a model :func:`apply_trainable` has set up, as a
    user counts them: ``requires_grad`` parameters, tied weights once; for ``new_rows``
    only the new rows (the whole embedding matrices carry ``requires_grad`` and optimizer
    state; hooks zero the original rows' gradients).

    Raises:
        ConfigError: as :func:`check`.
    """
    kind, arg = check(config)
    if kind == "new_rows":
        return _new_rows_count(embedding_parameters(model), arg)
    return _count(model)


def _new_rows_count(emb: list, n: int) -> int:
    return sum((p.shape[0] - n) * p.shape[1] for _, p in emb)


def count_params(model: Any) -> tuple[int, int]:
    """``(all, requires_grad)`` parameter elements; tied weights counted once."""
    seen, total, grad = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            grad += p.numel()
    return total, grad


def _count(model: Any) -> int:
    return count_params(model)[1]


def optimizer_state_note(trainable: int, with_grad: int) -> str:
    """What follows a trainable count when optimizer state covers more elements than
    that (``new_rows``: the whole embedding matrices); ``""`` otherwise. Both in elements."""
    return "" if trainable == with_grad else f" (optimizer state for {with_grad:,}: the whole embedding matrices)"
