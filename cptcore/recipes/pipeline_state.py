"""Step records of ``cpt pipeline``: content hashes, completion records, the plan.

Each step ``NAME`` writes into ``OUT/steps/NAME/`` and, when it has finished, the
completion record ``OUT/steps/NAME/.cpt_step.json`` (written last, atomically):
``{"step", "hash", "key", "upstream", "seconds", "finished", "result"}``. ``key`` is the
step's options with every input file replaced by ``sha256:<hex>`` of its contents (a
folder: of its files' relative paths and contents) and ``upstream`` the hashes of the
steps it reads; ``hash`` is the SHA-256 of both (canonical JSON). A step is *done* when its
record exists, its hash equals the one computed from the recipe now, and no step it reads
is to run; anything else (no record: never run or interrupted; a different hash) redoes
it and every step downstream. Hashes depend on contents, not on where OUT or the
inputs live.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

RECORD = ".cpt_step.json"
STARTED = ".cpt_step.started.json"
HASH_CACHE = ".cpt_hash_cache.json"
FORMAT = 1  # bump when a step's outputs change meaning: every step reruns


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest(obj: Any) -> str:
    """SHA-256 hex of ``obj`` as canonical JSON."""
    return hashlib.sha256(canonical(obj).encode("utf-8")).hexdigest()


class ContentHasher:
    """SHA-256 of files and folders, cached by (path, size, mtime_ns) in ``cache_file``
    (so an unchanged 500 MB model folder is read once, not on every rerun)."""

    def __init__(self, cache_file: Path | None = None):
        self.cache_file = cache_file
        self.cache: dict[str, list] = {}
        if cache_file is not None and cache_file.is_file():
            try:
                loaded = json.loads(cache_file.read_text(encoding="utf-8"))
                self.cache = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.cache = {}  # a damaged cache only costs rehashing

    def _file(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        hit = self.cache.get(key)
        if isinstance(hit, list) and len(hit) == 3 and hit[:2] == [st.st_size, st.st_mtime_ns]:
            return str(hit[2])
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        self.cache[key] = [st.st_size, st.st_mtime_ns, h.hexdigest()]
        return h.hexdigest()

    def hash(self, path: Path) -> str:
        """``sha256:<hex>`` of a file's bytes, or of a folder's sorted (relative path,
        file hash) pairs (hidden files skipped)."""
        if path.is_dir():
            entries = [(p.relative_to(path).as_posix(), self._file(p)) for p in sorted(path.rglob("*"))
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)]
            return "sha256:" + digest(entries)
        return "sha256:" + self._file(path)

    def save(self) -> None:
        if self.cache_file is not None:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.cache), encoding="utf-8")
            os.replace(tmp, self.cache_file)


@dataclass(frozen=True)
class StepPlan:
    """One step of the plan: its folder, hash, whether it runs and why."""

    name: str
    folder: Path
    hash: str
    key: dict[str, Any]
    upstream: dict[str, str]
    run: bool
    reason: str
    record: dict[str, Any] | None


def read_record(folder: Path, name: str = RECORD) -> dict[str, Any] | None:
    """The completion (or start) record in ``folder``, or None when absent or unreadable
    (an unreadable record counts as "interrupted": the step is redone)."""
    path = folder / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(folder: Path, record: Mapping[str, Any], name: str = RECORD) -> Path:
    """Write ``record`` atomically (temporary file, then rename) as ``folder/name``."""
    path = folder / name
    tmp = folder / (name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def why_changed(old: Mapping[str, Any], key: Mapping[str, Any], upstream: Mapping[str, str]) -> str:
    """A short reason naming what differs between a record and the current step."""
    changed_up = [n for n, h in upstream.items() if (old.get("upstream") or {}).get(n) != h]
    if changed_up:
        return f"upstream {changed_up[0]} changed"
    old_key = old.get("key") or {}
    diffs = sorted(k for k in set(old_key) | set(key) if canonical(old_key.get(k)) != canonical(key.get(k)))
    if diffs:
        kinds = ["input" if isinstance(key.get(k), str) and str(key.get(k)).startswith("sha256:") else "option"
                 for k in diffs]
        return f"{kinds[0]} {diffs[0]} changed" + (f" (+{len(diffs) - 1} more)" if len(diffs) > 1 else "")
    return "recorded hash differs (cptcore's step format changed)"


def plan_step(name: str, folder: Path, key: dict[str, Any], upstream: dict[str, str], upstream_runs: list[str]) -> StepPlan:
    """Decide whether step ``name`` runs (see the module docstring)."""
    h = digest({"format": FORMAT, "step": name, "key": key, "upstream": upstream})
    record = read_record(folder)
    if record is None:
        started = read_record(folder, STARTED)
        reason = "interrupted (no completion record)" if started else "not run yet"
        return StepPlan(name, folder, h, key, upstream, True, reason, None)
    if record.get("hash") != h:
        return StepPlan(name, folder, h, key, upstream, True, why_changed(record, key, upstream), record)
    if upstream_runs:
        return StepPlan(name, folder, h, key, upstream, True, f"upstream {upstream_runs[0]} reruns", record)
    return StepPlan(name, folder, h, key, upstream, False, "done, unchanged", record)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
