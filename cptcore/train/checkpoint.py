"""Checkpoints: ``OUT/checkpoints/step-N/``, written atomically, keep-last-K, exact resume.

Layout of ``step-N/``::

    model/            strategy's sharded model I/O (booster.save_model(shard=True))
    optimizer/        strategy's sharded optimizer I/O
    lr_scheduler.pt   LR scheduler state (last_epoch = updates done)
                      (these three are ``BoosterStrategy.save``'s; another strategy writes
                      its own entries, listed in trainer_state.json's ``strategy_files``)
    adapter/          peft adapter (LoRA runs only), PeftModel.from_pretrained-loadable
    rng/rank-R.json   python, numpy and torch RNG states of rank R (JSON, no pickle)
    config.yaml       the resolved run config
    trainer_state.json  step, epoch, tokens_seen, micro_batches, sampler position,
                      world_size, layout and data fingerprint (:mod:`.resume_check`),
                      strategy_files (what ``strategy.save`` wrote: checked on load)
    checksums.sha256  SHA-256 of every other file (:mod:`.integrity`, sha256sum format)

Every rank writes into ``step-N.tmp/``; after a barrier rank 0 writes
``trainer_state.json``, hashes and fsyncs every file, writes ``checksums.sha256``, fsyncs
the folders, renames the folder to ``step-N`` (``os.rename`` is atomic on one
filesystem) and fsyncs ``checkpoints/``, then deletes all but the newest ``keep_last``
complete checkpoints. A run killed mid-save leaves only a ``.tmp`` folder, which resume
ignores and the next save of that step replaces.

Nothing read from a checkpoint can execute code: JSON, ``torch.load(weights_only=True)``
(ColossalAI's loaders patched by :mod:`cptcore.compat.safe_load`), and index entries
that must stay inside their folder. See docs/security.md.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

from ..compat import safe_load
from ..config import write_resolved
from ..errors import CptError
from .export import is_peft
from .integrity import check_tree, fsync_dir, inside, verify_checksums, write_checksums
from .resume_check import saved_fingerprint
from .runlock import held, writable_error

STATE = "trainer_state.json"
_STEP = re.compile(r"^step-(\d+)$")
#: trainer-state entries resume needs, and their types
STATE_KEYS = {"step": int, "micro_batches": int, "tokens_seen": int, "sampler": dict}
#: entries that may be absent (older checkpoints) but, when present, have these types
#: (``world_size`` an int >= 1)
OPTIONAL_KEYS = {"world_size": int, "layout": dict, "data": dict, "stage": dict,  # stage: cptcore.recipes.stages
                 "strategy_files": list}
#: what ``BoosterStrategy.save`` writes: the required entries of a checkpoint saved before
#: ``strategy_files`` was recorded
BOOSTER_FILES = ["model", "optimizer", "lr_scheduler.pt"]
#: entries of step-N/ the Trainer itself writes (everything else is the strategy's)
OWN_ENTRIES = {"rng", "config.yaml", "adapter", STATE, "checksums.sha256"}
#: digests of folders (path, every file's size and mtime) verified by this process or the
#: launcher that started it (inherited through the environment: the ranks of
#: ``cpt train --nproc-per-node`` do not hash a checkpoint their launcher just verified)
_VERIFIED_ENV = "CPT_VERIFIED_CHECKPOINTS"


def _stat_key(folder: Path) -> str:
    import hashlib

    files = []
    for root, _, names in os.walk(folder):
        for name in names:
            st = os.stat(os.path.join(root, name))
            files.append((os.path.join(root, name), st.st_size, st.st_mtime_ns))
    return hashlib.sha256(repr((str(folder.resolve()), sorted(files))).encode()).hexdigest()[:32]


def checkpoints_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints (``step-N`` folders with ``trainer_state.json``), oldest
    first. Not verified: see :func:`validate_checkpoint`."""
    d = checkpoints_dir(out_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _STEP.match(p.name)
        if m and p.is_dir() and (p / STATE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def validate_checkpoint(path: str | Path, world_size: int | None = None, verify: bool = True) -> dict:
    """Check a checkpoint folder is complete and intact before any heavy work; return its
    trainer state.

    Checks: ``trainer_state.json`` parses and has ``step``, ``micro_batches``,
    ``tokens_seen`` (ints) and ``sampler`` (a dict with ``epoch``/``position``); the
    model, optimizer, LR scheduler, config and per-rank RNG files exist; no symlink leaves
    the folder and every entry is a folder or a regular file
    (:func:`~cptcore.train.integrity.check_tree`, before any file is read); every shard name
    of an index stays inside its folder and exists; with ``verify`` every file matches
    ``checksums.sha256`` (once per process and folder); with ``world_size`` the saved
    world size matches.

    Raises:
        CptError: one line naming the folder or file and what is missing or corrupt
            (:class:`~cptcore.train.integrity.DamagedCheckpoint` for checksum failures).
    """
    p = Path(path)
    if not p.is_dir():
        raise CptError(f"checkpoint not found: {p}")
    check_tree(p)  # no symlink out of the folder, no FIFO: before any file is read
    state_file = p / STATE
    if not state_file.is_file():
        raise CptError(f"{p}: incomplete checkpoint (no {STATE}; the save was interrupted)")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        int(state["step"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CptError(f"{state_file}: corrupt trainer state ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise CptError(f"{state_file}: corrupt trainer state (a {type(state).__name__}, not an object)")
    for name, kind in STATE_KEYS.items():
        value = state.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            what = "no" if name not in state else f"a bad ({type(value).__name__} {value!r:.40})"
            raise CptError(f"{state_file}: corrupt trainer state ({what} '{name}' entry)")
    for name, kind in OPTIONAL_KEYS.items():  # a hostile file must not reach int()/dict() below
        value = state.get(name, {"world_size": 1, "strategy_files": []}.get(name, {}))
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
            raise CptError(f"{state_file}: corrupt trainer state (a bad ({type(value).__name__} {value!r:.40}) "
                           f"'{name}' entry)")
    for name in ("epoch", "position") if state["sampler"] else ():  # {}: a Trainer run on its own batches
        value = state["sampler"].get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CptError(f"{state_file}: corrupt trainer state (sampler has no valid '{name}')")
    saved = state.get("strategy_files", BOOSTER_FILES)
    for name in saved:  # a name read from the file: a plain entry of this folder, nothing else
        if not isinstance(name, str) or "/" in name or name in OWN_ENTRIES:
            raise CptError(f"{state_file}: corrupt trainer state (a bad {name!r:.40} in 'strategy_files')")
        inside(p, name, "strategy_files entry")
    needed = [*saved, "config.yaml"]
    ranks = (f"rng/rank-{r}.json" for r in range(state.get("world_size", 1)))  # lazy: stops at the first missing
    for rel in itertools.chain(needed, ranks):
        if not (p / rel).exists():
            if rel.startswith("rng/") and (p / rel.replace(".json", ".pt")).exists():
                raise CptError(f"{p}: {rel.replace('.json', '.pt')} is a pickled RNG file (cptcore < 0.2), which "
                               "cptcore no longer loads; resume from a newer checkpoint or export this one")
            raise CptError(f"{p}: incomplete checkpoint, missing {rel}")
    for sub in ("model", "optimizer"):
        for idx in sorted((p / sub).glob("*.index.json")):
            try:
                index = json.loads(idx.read_text(encoding="utf-8"))
                files = set(index["weight_map"].values())
                group = (index.get("metadata") or {}).get("param_groups")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CptError(f"{idx}: corrupt index ({exc})") from exc
            for f in sorted(files | ({group} if group else set())):
                if not inside(p / sub, str(f), f"shard name in {idx.name}").is_file():
                    raise CptError(f"{p}: incomplete checkpoint, {sub}/{f} is missing")
    if verify:
        key = _stat_key(p)
        done = os.environ.get(_VERIFIED_ENV, "").split(",")
        if key not in done:
            verify_checksums(p)
            os.environ[_VERIFIED_ENV] = ",".join([k for k in done if k][-15:] + [key])
    if world_size is not None and int(state.get("world_size", 1)) != world_size:
        raise CptError(
            f"{p}: saved with {state.get('world_size')} processes, this run has {world_size}; resume with the same world size"
        )
    return state


def resolve_resume(resume: str | None, out_dir: str | Path, log: Any = None) -> Path | None:
    """``None`` -> None; a path -> that folder (validated later); ``"auto"`` -> the newest
    complete checkpoint of ``out_dir`` that passes :func:`validate_checkpoint`, falling
    back past damaged ones (each reported through ``log``, default stderr), or None when
    ``out_dir`` has no complete checkpoint.

    Raises:
        CptError: ``"auto"`` and every complete checkpoint is damaged (names the newest
            and its problem).
    """
    if not resume:
        return None
    if resume != "auto":
        return Path(resume)
    found = list_checkpoints(out_dir)
    if log is None:
        import sys

        def log(msg: str) -> None:
            if os.environ.get("RANK", "0") in ("", "0"):
                print(f"cpt train: {msg}", file=sys.stderr, flush=True)
    problems = []
    for ckpt in reversed(found):
        try:
            validate_checkpoint(ckpt)
        except CptError as exc:
            problems.append(f"{ckpt.name}: {exc}")
            log(f"--resume auto: skipping damaged checkpoint {ckpt.name} ({exc})")
            continue
        if problems:
            log(f"--resume auto: falling back to {ckpt.name}, the newest intact checkpoint")
        return ckpt
    if problems:
        raise CptError(f"--resume auto: no intact checkpoint in {checkpoints_dir(out_dir)} "
                       f"(newest {problems[0]})")
    return None


def rng_state() -> dict:
    """This process's python, numpy, torch (and CUDA) RNG states as plain JSON values:
    ``{"python": [version, [625 ints], gauss|None], "numpy": {"key": [624 ints], "pos",
    "has_gauss", "cached_gaussian"}, "torch": [bytes as ints], "cuda": [[ints], ...]}``."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": kind, "key": [int(k) for k in key], "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`.

    Raises:
        KeyError, TypeError, ValueError: a malformed state (the caller names the file).
    """
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), None if gauss is None else float(gauss)))
    n = state["numpy"]
    np.random.set_state((str(n["kind"]), np.asarray(n["key"], dtype=np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def save_checkpoint(
    out_dir: str | Path, step: int, strategy: Any, model: Any, optimizer: Any, scheduler: Any,
    trainer_state: dict, config: Any, keep_last: int, hf_model: Any = None, protect: Any = (),
) -> Path:
    """Write ``OUT/checkpoints/step-{step}`` atomically (see the module docstring). Called
    on every rank. ``trainer_state`` gains ``step``, ``world_size``, ``layout`` and
    ``data`` (:func:`cptcore.train.resume_check.saved_fingerprint`). Folders ``step-*.tmp``
    left by killed saves are removed only while this process holds the run lock on
    ``out_dir`` (:mod:`.runlock`), so a save can never delete another run's save in
    progress. ``protect``: steps whose checkpoints keep-last-K never deletes (the best
    step of ``eval.on_budget: keep_best``). Returns the final folder.

    The ranks agree after each phase (an all-gather of "did this rank fail, and why"),
    so a write failure on one rank stops every rank with the same one-line error instead
    of leaving the others in a barrier whose peer is gone.

    Raises:
        CptError: the folder cannot be written (one line naming the path and the reason),
            on every rank.
    """

    rank, world = _rank_world()
    final = checkpoints_dir(out_dir) / f"step-{step}"
    tmp = final.with_name(final.name + ".tmp")

    def start() -> None:
        if rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / "rng").mkdir(parents=True)

    def write() -> None:
        strategy.save(tmp, model, optimizer, scheduler)
        (tmp / "rng" / f"rank-{rank}.json").write_text(json.dumps(rng_state()), encoding="utf-8")
        adapter = hf_model
        if adapter is not None and is_peft(adapter) and getattr(strategy, "full_params_local", True) is False:
            adapter = strategy.unwrap(model)  # sharded (Gemini, hybrid): the local module holds no full adapter
        if rank == 0:
            write_resolved(config, tmp)
            if adapter is not None and is_peft(adapter):
                adapter.save_pretrained(str(tmp / "adapter"))

    def complete() -> None:
        if rank != 0:
            return
        files = sorted(e.name for e in tmp.iterdir() if e.name not in OWN_ENTRIES)  # what strategy.save wrote
        state = dict(trainer_state, step=step, world_size=world, strategy_files=files,
                     **saved_fingerprint(config, strategy, world))
        (tmp / STATE).write_text(json.dumps(state, indent=2), encoding="utf-8")
        write_checksums(tmp)  # hashes and fsyncs every file, then the folders
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(final.parent)
        if held(out_dir):  # only this run writes here: a .tmp is a killed save of ours
            for stale in checkpoints_dir(out_dir).glob("step-*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        prune(out_dir, keep_last, protect)

    for phase in (start, write, complete):
        _agreed(phase, tmp, rank, world)
    return final


def _as_write_error(exc: BaseException, tmp: Path) -> CptError | None:
    if isinstance(exc, CptError):
        return exc
    if isinstance(exc, OSError):
        return writable_error(exc, str(tmp))
    if isinstance(exc, RuntimeError) and str(tmp) in str(exc):  # torch.save: "File ... cannot be opened"
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return CptError(f"cannot write checkpoint {tmp}: {first} (check the output folder's permissions and free space)")
    return None


def _agreed(phase: Any, tmp: Path, rank: int, world: int) -> None:
    """Run ``phase`` on this rank, then share success or the one-line failure with every
    rank (replaces a barrier). A failure that is not a write error (a bug) re-raises with
    its traceback on its rank; the other ranks stop with a one-line error naming it."""
    error: BaseException | None = None
    try:
        phase()
    except Exception as exc:  # noqa: BLE001 - shared with the other ranks below
        error = exc
    line = None
    if error is not None:
        known = _as_write_error(error, tmp)
        line = str(known) if known is not None else f"rank {rank} failed while saving {tmp}: {type(error).__name__}: {error}"
    lines = [line]
    if world > 1:
        import torch.distributed as dist

        lines = [None] * world
        dist.all_gather_object(lines, line)  # between this run's own ranks
    if error is not None:
        known = _as_write_error(error, tmp)
        if known is None:
            raise error
        raise known from error
    failed = [m for m in lines if m]
    if failed:
        raise CptError(failed[0])


def prune(out_dir: str | Path, keep_last: int, protect: Any = ()) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (``keep_last <= 0``
    keeps all) and those of the steps in ``protect``. Returns the deleted folders."""
    if keep_last <= 0:
        return []
    found = list_checkpoints(out_dir)
    keep = {f"step-{int(s)}" for s in protect}
    doomed = [p for p in found[:-keep_last] if p.name not in keep]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def load_checkpoint(path: Path, strategy: Any, model: Any, optimizer: Any, scheduler: Any,
                    new_data: bool = False) -> dict:
    """Restore model, optimizer, scheduler (through the strategy) and this rank's RNG
    states; return the trainer state (the caller restores the sampler and counters).
    Verifies the checkpoint first (:func:`validate_checkpoint`; free when precheck did it
    in this process) and makes ColossalAI's loaders non-executing
    (:func:`cptcore.compat.safe_load.apply`).

    With ``new_data`` (``checkpointing.new_data``: the training data changed on purpose)
    the returned ``sampler`` entry is ``{"epoch": 0, "position": 0, "new_data": True}``
    (every ``data.mixing`` sampler starts afresh from it, whatever mode saved): the new data is
    read from its beginning while step, optimizer, LR schedule and RNG continue.

    Raises:
        CptError: damaged, incomplete or unreadable checkpoint, naming the file.
    """

    rank, world = _rank_world()
    state = validate_checkpoint(path, world)
    safe_load.apply()
    rng_file = path / "rng" / f"rank-{rank}.json"
    with unreadable_as_error(path):
        strategy.load(path, model, optimizer, scheduler)
    try:
        set_rng_state(json.loads(rng_file.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CptError(f"{rng_file}: corrupt RNG state ({type(exc).__name__}: {exc})") from exc
    if new_data:
        state = dict(state, sampler={"epoch": 0, "position": 0, "new_data": True})
    return state


@contextlib.contextmanager
def unreadable_as_error(path: Path):
    """Turn a failure to read a checkpoint's files (truncated or overwritten ``.pt``/
    ``.bin`` shards: pickle, zip, EOF or size errors from torch) into one line.

    Raises:
        CptError: ``PATH: corrupt checkpoint, cannot read it (ErrorType: message)``.
    """
    try:
        yield
    except CptError:
        raise
    except Exception as exc:  # torch.load raises many types on damaged files
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CptError(f"{path}: corrupt checkpoint, cannot read it ({type(exc).__name__}: {first})") from exc
