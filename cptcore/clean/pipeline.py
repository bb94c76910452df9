"""``clean(pm, args)``: inputs -> shards of records -> filters -> cleaned JSONL(.gz)
shards, ``stats.json`` and ``card.md``. Used by ``cpt clean`` and usable from Python.

The driver reads the inputs in order and cuts them into shards (``shard_docs`` records
or ``shard_bytes`` bytes, never across inputs). Each shard goes to the executor (local
threads/processes or Ray tasks), which runs the document-stage filters and computes the
dedup signatures; the driver then applies the dedup filters in input order, writes the
shard's kept (and removed) documents, the signatures of what it kept, and last its
completion marker ``state/part-NNNNN.json``. The built-in dedup filters keep their
"seen" keys in SQLite files ``state/index-NAME.sqlite`` (:mod:`cptcore.clean.index`), so
the driver's memory is bounded by the shards in flight, not by the corpus. A rerun with the same options skips every
shard that has a marker (replaying its signatures into the dedup index), so a killed
run resumes at the first unfinished shard and ends with the same bytes.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..data import readers
from ..data.executors import check_executor, make_executor
from ..data.stats import Progress, reason_key
from ..errors import ConfigError, DataError
from ..plugins import file_sha256
from .filters import DEFAULT_FILTERS, FilterContext, build_chain, clean_shard
from .report import StatsMerger, count_rule, write_card
from .shards import read_signatures, write_json, write_jsonl, write_signatures

STATE_VERSION = 1


@dataclass(frozen=True)
class CleanArgs:
    """Everything ``cpt clean`` takes (docs/clean.md describes each option)."""

    inputs: tuple[str, ...]
    out: str
    filters: tuple[str, ...] = ()  # empty: DEFAULT_FILTERS (+ language, decontaminate when asked)
    filter_options: dict = field(default_factory=dict)  # filter name -> {option: value}
    languages: tuple[str, ...] = ()  # --language: kept languages (adds the language filter)
    decontaminate: tuple[str, ...] = ()  # --decontaminate NAME=FILE (adds the decontaminate filter)
    text_field: str = "text"
    seed: int = 0
    shard_docs: int = 10_000  # records per shard at most
    shard_bytes: int = 16 << 20  # input bytes per shard at most (bounds memory)
    in_flight_bytes: int = 256 << 20  # no new shard is read while this much input is in flight
    num_proc: int = 1
    executor: str = "local"
    ray_address: str | None = None
    on_error: str = "stop"  # "stop" | "skip"
    examples: int = 3  # removed documents shown per filter in card.md
    write_removed: bool = True  # also write removed documents (with reason) to removed/
    compress: bool = True  # .jsonl.gz (else .jsonl)
    overwrite: bool = False
    command: str = ""
    progress: bool = False


def filter_names(args: CleanArgs) -> list[str]:
    """The filters run, in order: ``args.filters`` or the defaults, with ``language`` and
    ``decontaminate`` put first when ``--language`` / ``--decontaminate`` ask for them."""
    names = list(args.filters) or list(DEFAULT_FILTERS)
    if args.decontaminate and "decontaminate" not in names:
        names.insert(0, "decontaminate")
    if args.languages and "language" not in names:
        names.insert(0, "language")
    return names


def _parse_sets(items: tuple[str, ...]) -> dict[str, str]:
    sets: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--decontaminate {item}: expected NAME=FILE")
        if name in sets:
            raise ConfigError(f"--decontaminate {name}: given twice")
        sets[name] = path
    return sets


def _validate(args: CleanArgs) -> None:
    if not args.inputs:
        raise ConfigError("give at least one --input")
    if args.on_error not in ("stop", "skip"):
        raise ConfigError(f"--on-error must be stop or skip, got {args.on_error!r}")
    if args.shard_docs < 1:
        raise ConfigError(f"--shard-docs must be >= 1, got {args.shard_docs}")
    if args.shard_bytes < 1:
        raise ConfigError(f"--shard-mb must be > 0 (shard_bytes {args.shard_bytes} < 1 byte)")
    if args.examples < 0:
        raise ConfigError(f"--examples must be >= 0, got {args.examples}")
    if args.num_proc < 1:
        raise ConfigError(f"--num-proc must be >= 1, got {args.num_proc}")
    if args.in_flight_bytes < 1:
        raise ConfigError(f"--in-flight-mb must be > 0 (in_flight_bytes {args.in_flight_bytes} < 1 byte)")
    for spec in args.inputs:
        if readers.parse_input(spec).weight is not None:
            raise ConfigError(f"--input {spec}: cpt clean takes no weights (give them to cpt prepare)")


def _fingerprint(args: CleanArgs, chain_names, options) -> dict[str, Any]:
    """What must be equal for a rerun to resume (not the executor or worker count)."""
    files = []
    for spec in args.inputs:
        for p in readers.expand(readers.parse_input(spec), exclude=args.out):
            files.append([p, os.path.getsize(p)])
    keep = ("inputs", "text_field", "seed", "shard_docs", "shard_bytes", "on_error", "write_removed", "compress")
    fp = {k: v for k, v in asdict(args).items() if k in keep}
    fp["inputs"] = list(fp["inputs"])
    fp.update(version=STATE_VERSION, files=files, filters=list(chain_names), options=options)
    sets = (options.get("decontaminate") or {}).get("sets") or {}
    if sets:  # an evaluation file edited between a kill and the rerun changes the decisions
        fp["evaluation_sets"] = {name: file_sha256(path) for name, path in sorted(sets.items())}
    return json.loads(json.dumps(fp, sort_keys=True))


def _read_state(path: Path) -> Any:
    """A state file (``state/run.json``, a shard marker) as JSON.

    Raises:
        ConfigError: the file is not valid JSON (named; ``--overwrite`` starts over).
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable cpt clean state ({exc}); use --overwrite to start over") from None


def _prepare_out(out: Path, fingerprint: dict, overwrite: bool) -> bool:
    """Create ``out``; returns True when it holds an unfinished or finished run with the
    same fingerprint (resume).

    Raises:
        ConfigError: ``out`` holds something else (without ``overwrite``), or is not a
            ``cpt clean`` folder (with it).
    """
    saved = out / "state" / "run.json"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not saved.is_file():
            if overwrite:
                raise ConfigError(f"--out {out}: refusing to delete a non-empty folder not made by 'cpt clean'")
            raise ConfigError(f"--out {out} exists and is not empty (use --overwrite)")
        if not overwrite and _read_state(saved) == fingerprint:
            return True
        if not overwrite:
            raise ConfigError(f"--out {out} holds a cpt clean run with other inputs or options (use --overwrite to replace it)")
        shutil.rmtree(out)
    for sub in ("shards", "removed", "state"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_json(saved, fingerprint)
    return False


@dataclass
class _Shard:
    index: int
    input: int
    first_key: int
    records: list


def _shards(args: CleanArgs, specs) -> Iterator[_Shard]:
    index = key = 0
    for i, spec in enumerate(specs):
        recs: list = []
        size = 0
        for rec in readers.iter_input(spec, args.text_field, exclude=args.out):
            recs.append(rec)
            size += rec.nbytes
            if len(recs) >= args.shard_docs or size >= args.shard_bytes:
                yield _Shard(index, i, key, recs)
                index, key, recs, size = index + 1, key + len(recs), [], 0
        if recs:
            yield _Shard(index, i, key, recs)
            index, key = index + 1, key + len(recs)


def _text(rec: readers.Record) -> str | None:
    if rec.error:
        return None
    return rec.text if rec.text is not None else f"{rec.source}{rec.target}"


def _jsonable(value: Any) -> Any:
    """A value JSON has no type for, as text: what a Parquet column can hold besides
    strings and numbers (timestamps and dates as ISO 8601, bytes as base64, decimals and
    anything else as ``str``)."""
    import base64
    import datetime

    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def _out_line(rec: readers.Record) -> str:
    """The kept record as one JSON line: the input object unchanged (values JSON cannot
    hold as :func:`_jsonable` text), or ``{"text": ...}`` for plain text."""
    return json.dumps(rec.data if rec.data is not None else {"text": rec.text}, ensure_ascii=False, default=_jsonable)


def _where(rec: readers.Record) -> str:
    return f"{rec.path}:{rec.line}"


class _Run:
    def __init__(self, args: CleanArgs, chain, out: Path):
        self.args, self.chain, self.out = args, chain, out
        self.suffix = ".jsonl.gz" if args.compress else ".jsonl"
        self.resumed = 0

    def marker(self, shard: _Shard) -> Path:
        return self.out / "state" / f"part-{shard.index:05d}.json"

    def done(self, shard: _Shard) -> dict | None:
        """The shard's marker when it was finished by an earlier run (checked against
        the records read now), else None."""
        path = self.marker(shard)
        if not path.is_file():
            return None
        m = _read_state(path)
        recs = shard.records
        if (m["documents"]["in"], m["first"], m["last"]) != (len(recs), _where(recs[0]), _where(recs[-1])):
            raise ConfigError(f"{recs[0].path}: the input changed since the interrupted run (use --overwrite)")
        return m

    def replay(self, shard: _Shard) -> None:
        keys, sigs = read_signatures(self.out / "state" / f"part-{shard.index:05d}.sig.npz")
        for name, f in self.chain.dedup:
            rows = sigs.get(name)
            for j, key in enumerate(keys.tolist()):
                f.add(rows[j], key)

    def finish(self, shard: _Shard, work) -> dict:
        args, name = self.args, f"part-{shard.index:05d}"
        kept_lines, removed_lines, kept_keys = [], [], []
        kept_sigs: dict[str, list] = {n: [] for n, _ in self.chain.dedup}
        removed: collections.Counter = collections.Counter()
        rules: collections.Counter = collections.Counter()
        examples: dict[str, list] = {}
        files: set = set()
        bytes_in = bytes_kept = 0
        survivor = 0
        for j, rec in enumerate(shard.records):
            key = shard.first_key + j
            files.add(rec.path)
            bytes_in += rec.nbytes
            verdict = None
            if rec.error:
                if args.on_error == "stop":
                    raise DataError(rec.error + " (use --on-error skip to skip and count such records)", path=rec.path, line=rec.line or None)
                verdict = (reason_key(rec.error), rec.error)
            elif work.removed[j] is not None:
                verdict = work.removed[j]
            else:
                sig_row = {n: work.signatures[n][survivor] for n, _ in self.chain.dedup}
                survivor += 1
                for n, f in self.chain.dedup:
                    detail = f.check(sig_row[n], key)
                    if detail is not None:
                        verdict = (n, detail)
                        break
            if verdict is None:
                # every dedup filter remembers only the documents the run keeps (not one a
                # later filter removes), which is what replay() gives a resumed run
                for n, f in self.chain.dedup:
                    f.add(sig_row[n], key)
                kept_lines.append(_out_line(rec))
                kept_keys.append(key)
                for n in kept_sigs:
                    kept_sigs[n].append(sig_row[n])
                bytes_kept += rec.nbytes
                continue
            reason, detail = verdict
            removed[reason] += 1
            count_rule(rules, reason, reason_key(detail))
            source = _where(rec)
            ex = examples.setdefault(reason, [])
            if len(ex) < args.examples:
                ex.append({"source": source, "detail": detail, "text": (_text(rec) or "")[:400]})
            if args.write_removed:
                removed_lines.append(json.dumps({"reason": reason, "detail": detail, "source": source, "text": _text(rec)}, ensure_ascii=False))
        outputs = {}
        for folder, lines in (("shards", kept_lines), ("removed", removed_lines)):
            if lines:  # an empty file would be an "empty file" record for cpt prepare
                write_jsonl(self.out / folder / (name + self.suffix), lines, args.compress)
                outputs[folder] = f"{folder}/{name}{self.suffix}"
        write_signatures(self.out / "state" / f"{name}.sig.npz", kept_keys, kept_sigs)
        recs = shard.records
        marker = {
            "shard": shard.index,
            "input": shard.input,
            "first_key": shard.first_key,
            "first": _where(recs[0]),
            "last": _where(recs[-1]),
            "files": sorted(files),
            "documents": {"in": len(recs), "kept": len(kept_lines), "removed": dict(sorted(removed.items()))},
            "rules": dict(sorted(rules.items())),
            "bytes": {"in": bytes_in, "kept": bytes_kept},
            "examples": examples,
            "outputs": outputs,
        }
        assert marker["documents"]["in"] == marker["documents"]["kept"] + sum(removed.values())
        write_json(self.marker(shard), marker)  # last: the shard is complete
        return marker


def clean(pm: Any, args: CleanArgs) -> dict[str, Any]:
    """Run the whole cleaning; returns the stats (also written to ``out/stats.json``,
    with ``out/card.md``).

    Raises:
        ConfigError: bad option, unknown filter, output folder in use.
        DataError: bad input with ``on_error="stop"`` (``file:line: problem``), bad
            evaluation file.
    """
    _validate(args)
    check_executor(pm, args.executor, args.ray_address)
    t0 = time.perf_counter()
    specs = [readers.parse_input(s) for s in args.inputs]
    options = {k: dict(v) for k, v in args.filter_options.items()}
    if args.languages:
        options.setdefault("language", {})["keep"] = list(args.languages)
    if args.decontaminate:
        options.setdefault("decontaminate", {})["sets"] = _parse_sets(args.decontaminate)
    out = Path(args.out)
    chain = build_chain(pm, filter_names(args), options, FilterContext(seed=args.seed, scratch=str(out / "state")))
    resume = _prepare_out(out, _fingerprint(args, chain.names, chain.options), args.overwrite)
    run = _Run(args, chain, out)
    total_bytes = sum(os.path.getsize(p) for s in specs for p in readers.expand(s, exclude=args.out))
    progress = Progress(total_bytes, args.progress, "clean")
    merged = StatsMerger(specs, args.examples)
    executor = make_executor(pm, args.executor, args.num_proc, clean_shard, (chain.doc, chain.dedup), args.ray_address)
    try:
        pending: collections.deque = collections.deque()
        stream = _shards(args, specs)
        # read ahead: one shard worked on and one waiting per worker, and no new shard while
        # in_flight_bytes of input are in pending (one always is)
        lookahead = max(2, 2 * executor.num_proc)
        in_flight = 0  # input bytes of the shards in pending

        def fill() -> None:
            nonlocal in_flight
            while len(pending) < lookahead and (not pending or in_flight < args.in_flight_bytes):
                shard = next(stream, None)
                if shard is None:
                    return
                m = run.done(shard) if resume else None
                fut = None if m else executor.submit([_text(r) for r in shard.records])
                nbytes = sum(r.nbytes for r in shard.records)
                in_flight += nbytes
                pending.append((shard, m, fut, nbytes))

        fill()
        while pending:
            shard, m, fut, nbytes = pending.popleft()
            in_flight -= nbytes
            if m is not None:
                run.replay(shard)
                run.resumed += 1
            else:
                m = run.finish(shard, fut.get())
            merged.add(m)
            for rec in shard.records:
                progress.advance(rec.progress_bytes, 0)  # on-disk bytes (.gz: compressed), as the total
            shard.records = []
            fill()
        progress.close()
    except BaseException:
        progress.close()
        raise
    finally:
        executor.close()
        for _name, f in chain.dedup:
            if hasattr(f, "close"):
                f.close()  # the on-disk indexes are scratch (rebuilt from the signatures on resume)
    stats = json.loads(json.dumps(merged.stats(args, chain, run.resumed, time.perf_counter() - t0)))  # as written
    write_json(out / "stats.json", stats)
    write_card(out / "card.md", stats, pm)
    return stats
