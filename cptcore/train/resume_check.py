"""Resume only into what the checkpoint was made with: same layout, same data.

Each checkpoint's ``trainer_state.json`` records (see :func:`saved_fingerprint`)::

    "layout": {"world_size", "strategy", "dp", "tp", "pp", "sp"}
    "data":   {"sources": [{"path", "weight", "manifest_sha256", "rows"}, ...], "shuffle"}

and the sampler entry holds ``seed`` and ``micro_batch_size``. :func:`check_resume`
(run by ``precheck``, before any process group or model exists) compares them with the
run about to start and refuses a difference in one line naming each differing field.

A different layout is always refused (model and optimizer shards are per rank). A
different data set is refused unless ``checkpointing.new_data=true``: the run then keeps
step, optimizer, LR schedule and RNG, and reads the new data from its beginning (sampler
epoch 0, micro-batch 0 of the new data's own order); the old sampler position means
nothing in another data set. Sources are compared by manifest content (SHA-256 of
``manifest.json``), row count and weight, in order, not by path: a moved folder is the
same data.

Torch-free (the strategy's options come from the plugin registry).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, CptError
from .data import parse_source

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..plugins import CptPluginManager

LAYOUT_KEYS = ("world_size", "strategy", "dp", "tp", "pp", "sp")


def data_fingerprint(config: RunConfig) -> dict:
    """``{"sources": [...], "shuffle": bool}`` of ``config.data.train`` (reads each
    folder's ``manifest.json``; ``rows`` is its ``packs`` count)."""
    import json

    sources = []
    for spec in config.data.train:
        src = parse_source(spec)
        raw = (src.path / "manifest.json").read_bytes()
        try:
            rows = json.loads(raw).get("packs")
        except (ValueError, AttributeError):
            rows = None
        sources.append({"path": os.path.abspath(src.path), "weight": src.weight,
                        "manifest_sha256": hashlib.sha256(raw).hexdigest(), "rows": rows})
    return {"sources": sources, "shuffle": bool(config.data.shuffle)}


def layout_of(name: str, world: int, dp: int, tp: int = 1, pp: int = 1, sp: int = 1) -> dict:
    return {"world_size": int(world), "strategy": name, "dp": int(dp), "tp": int(tp), "pp": int(pp), "sp": int(sp)}


def saved_fingerprint(config: RunConfig, strategy: Any, world: int) -> dict:
    """``{"layout": ..., "data": ...}`` for ``trainer_state.json``, from the live strategy
    (``strategy.plugin``'s ``tp_size``/``pp_size``/``sp_size`` where it has them)."""
    plugin = getattr(strategy, "plugin", None)
    size = lambda attr: int(getattr(plugin, attr, 1) or 1)  # noqa: E731
    layout = layout_of(getattr(strategy, "name", "?"), world, getattr(strategy, "dp_size", world),
                       size("tp_size"), size("pp_size"), size("sp_size"))
    return {"layout": layout, "data": data_fingerprint(config)}


def planned_layout(config: RunConfig, pm: CptPluginManager, world: int) -> dict:
    """The layout ``config`` gives ``world`` ranks (same arithmetic as ``--dry-run``)."""
    from .plan import layout_for, validate_strategy  # lazy: cycle (plan imports this module)

    spec, options = validate_strategy(config, pm, world)
    lay = layout_for(spec.name, options, world)
    return layout_of(spec.name, world, lay.dp, lay.tp, lay.pp, lay.sp)


def _diff(saved: dict, now: dict, keys: Any) -> list[str]:
    return [f"{k} {saved.get(k)} -> {now.get(k)}" for k in keys if k in saved and saved.get(k) != now.get(k)]


def data_differences(saved: dict, now: dict) -> list[str]:
    """Human-readable differences between two :func:`data_fingerprint` results."""
    out = []
    a, b = saved.get("sources", []), now.get("sources", [])
    if len(a) != len(b):
        out.append(f"{len(a)} source(s) -> {len(b)}")
    for i, (x, y) in enumerate(zip(a, b), 1):
        what = _diff(x, y, ("rows", "weight"))
        if x.get("manifest_sha256") != y.get("manifest_sha256"):
            what.append(f"manifest sha256 {str(x.get('manifest_sha256'))[:12]} -> {str(y.get('manifest_sha256'))[:12]}")
        if what:
            out.append(f"source {i} ({y.get('path')}): {', '.join(what)}")
    out += _diff(saved, now, ("shuffle",))
    return out


def check_resume(resume: Path, config: RunConfig, pm: CptPluginManager, world_size: int | None = None, state: dict | None = None) -> dict:
    """Validate and verify the checkpoint (:func:`~cptcore.train.checkpoint.validate_checkpoint`;
    skipped when the caller passes the ``state`` it returned), then compare its layout,
    sampler settings and data with this run's. Returns the trainer state.

    Raises:
        CptError: damaged or incomplete checkpoint; ConfigError: ``cannot resume CKPT:
            the layout differs (...)``, ``... micro_batch_size 2 -> 4``, or ``the training
            data differs (...)`` with the way to continue on new data.
    """
    from .checkpoint import validate_checkpoint  # lazy: cycle (checkpoint imports this module)

    world = world_size or int(os.environ.get("WORLD_SIZE", "1") or 1)
    if state is None:
        state = validate_checkpoint(resume)
    saved_layout = dict(state.get("layout") or {"world_size": state.get("world_size", 1)})
    if not all(isinstance(v, (int, str)) for v in saved_layout.values()):  # from a file: no lists, no objects
        raise CptError(f"{Path(resume) / 'trainer_state.json'}: corrupt trainer state (a bad 'layout' entry: "
                       f"{saved_layout!r:.80})")
    if isinstance(saved_layout.get("strategy"), str):  # the live strategy may carry an alias ("3d" for hybrid3d)
        try:
            saved_layout["strategy"] = pm.registry("strategies").get(saved_layout["strategy"]).name
        except CptError:
            pass
    now = planned_layout(config, pm, world)
    diff = _diff(saved_layout, now, LAYOUT_KEYS)
    if diff:
        want = ", ".join(f"{k}={saved_layout[k]}" for k in LAYOUT_KEYS if k in saved_layout)
        raise ConfigError(f"cannot resume {resume}: the layout differs ({'; '.join(diff)}); resume with the "
                          f"checkpoint's layout ({want}), or export it (cpt export) and start a new run from the export")
    new_data = bool(getattr(config.checkpointing, "new_data", False))
    if new_data:
        if os.environ.get("RANK", "0") in ("", "0"):
            import sys

            print(f"cpt train: checkpointing.new_data: resuming {resume} at step {state['step']} on this run's data, "
                  "read from its beginning (the saved sampler position is not used)", file=sys.stderr, flush=True)
        return state
    sampler = state["sampler"]
    order = _diff(sampler, {"seed": config.training.seed, "micro_batch_size": config.training.micro_batch_size},
                  ("seed", "micro_batch_size"))
    if order:
        raise ConfigError(f"cannot resume {resume} exactly: {'; '.join(order)} (the data order would differ); "
                          "use the checkpoint's values, or set checkpointing.new_data=true to start the data afresh")
    if "data" in state:
        try:
            diff = data_differences(state["data"], data_fingerprint(config))
        except (TypeError, AttributeError, KeyError, ValueError) as exc:  # odd types read from the file
            raise CptError(f"{Path(resume) / 'trainer_state.json'}: corrupt trainer state (a bad 'data' entry: "
                           f"{type(exc).__name__}: {exc})") from exc
        if diff:
            raise ConfigError(
                f"cannot resume {resume}: the training data differs from the checkpoint's ({'; '.join(diff)}); "
                "use the same --data, or set checkpointing.new_data=true to continue on the new data "
                "(it is read from its beginning; step, optimizer and LR schedule continue)")
    return state
