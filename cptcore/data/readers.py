"""Reading raw inputs: JSONL, JSON, Parquet and plain-text files, globs and weights.

Every reader yields :class:`Record` objects, one per document, *including the bad
ones*: a record with ``error`` set names the problem (``"malformed JSON"``, ``"invalid
UTF-8"``, ``"missing field 'text'"``...), so the caller decides whether to stop
(:class:`~cptcore.errors.DataError` naming ``file:line``) or to skip and count it.
Files are read lazily, line by line (JSONL, text) or batch by batch (Parquet), so memory
stays bounded; a JSON file holding one array is the exception (it is loaded whole).
"""

from __future__ import annotations

import glob
import json
import dataclasses
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".text", ".md")


@dataclass(frozen=True)
class InputSpec:
    """One ``--input PATH[:WEIGHT]``: a path or glob and its optional mixing weight."""

    pattern: str
    weight: float | None = None

    @property
    def label(self) -> str:
        return self.pattern


@dataclass(frozen=True)
class Record:
    """One document read from ``path`` at ``line`` (1-based line, array item or row).

    ``text`` is the document (pretraining) and ``data`` the parsed JSON object (SFT);
    ``source``/``target`` are set for the seed's ``{source, target, category}`` rows.
    ``error`` is a short reason when the record is unusable; ``nbytes`` is how many
    bytes of the file it consumed, decompressed for ``.gz`` (the manifest's ``bytes``);
    ``disk_bytes`` is its share of the file on disk when that differs (``.gz``: the
    compressed bytes read for it), which the progress bar and its ETA count, since
    their total is the inputs' size on disk (see :attr:`progress_bytes`).
    """

    path: str
    line: int
    text: str | None = None
    source: str | None = None
    target: str | None = None
    data: Any = None
    error: str | None = None
    nbytes: int = 0
    disk_bytes: int | None = None

    @property
    def progress_bytes(self) -> int:
        """Bytes of the file on disk this record accounts for (``disk_bytes``, else
        ``nbytes``): what the progress bar advances by."""
        return self.nbytes if self.disk_bytes is None else self.disk_bytes


def parse_input(value: str) -> InputSpec:
    """Parse ``PATH`` or ``PATH:WEIGHT`` (the weight is a positive, finite number).

    A path that exists as written is taken literally, even when it ends in ``:NUMBER``
    (a file named ``x:1``); otherwise the text after the last ``:`` is the weight when
    the text before it names an existing file or a glob, and part of the path when not
    (``with:colon/a.jsonl``).

    Raises:
        DataError: the weight is not a positive finite number (``a.jsonl:0``,
            ``a.jsonl:-1``, ``a.jsonl:inf``), or is not a number while the path before
            it exists (``a.jsonl:abc``, ``a.jsonl:``).
    """
    import math

    head, sep, tail = value.rpartition(":")
    if not sep or not head or tail.startswith(("/", "\\")) or os.path.exists(os.path.expanduser(value)):
        return InputSpec(value)
    try:
        weight = float(tail)
    except ValueError:
        target = os.path.expanduser(head)
        if os.path.exists(target) or (glob.has_magic(target) and not glob.has_magic(tail)):
            raise DataError(f"--input {value}: the weight {tail!r} is not a number (PATH:WEIGHT, e.g. {head}:0.5)") from None
        return InputSpec(value)
    if not (weight > 0 and math.isfinite(weight)):
        raise DataError(f"--input {value}: the weight must be a positive finite number")
    return InputSpec(head, weight)


def _in_folder(name: str) -> bool:
    """Whether a file found in a folder input is read: a supported suffix, or
    JSONL/JSON/text with ``.gz`` after it (``a.jsonl.gz``)."""
    name = name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return True
    return name.removesuffix(".gz").endswith(JSONL_SUFFIXES + JSON_SUFFIXES + TEXT_SUFFIXES)


def _inside_prepared(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in an Arrow dataset folder under ``root`` (a ``cpt prepare``
    output: ``dataset_info.json`` + ``state.json``), whose JSON files are not documents
    (``--input data/ --out data/prepared`` would read them on the next run)."""
    for folder in path.parents:
        if (folder / "dataset_info.json").is_file() and (folder / "state.json").is_file():
            return True
        if folder == root:
            return False
    return False


def expand(spec: InputSpec, exclude: str | os.PathLike | None = None) -> list[str]:
    """The files an input names: the path itself, or the sorted matches of a glob.

    A folder means every supported file in it, recursively, ``.gz`` ones included
    (sorted), except inside Arrow dataset folders (earlier ``cpt prepare`` outputs).
    ``exclude``: a folder whose files are never input (the command's own output folder:
    with ``--input raw/ --out raw/clean`` the run's state and shards are not documents,
    and a rerun's input would change with them). Returns an empty list when nothing
    matches (the caller reports it as a missing file).
    """
    pattern = os.path.expanduser(spec.pattern)
    if glob.has_magic(pattern):
        files = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    elif os.path.isdir(pattern):
        found = [p for p in Path(pattern).rglob("*") if p.is_file() and _in_folder(p.name)]
        files = sorted(str(p) for p in found if not _inside_prepared(p, Path(pattern)))
    else:
        files = [pattern] if os.path.exists(pattern) else []
    if exclude is None:
        return files
    root = Path(exclude).resolve()
    return [p for p in files if root != Path(p).resolve() and root not in Path(p).resolve().parents]


def file_format(path: str) -> str:
    """``"jsonl"``, ``"json"``, ``"parquet"`` or ``"text"`` from the file name (a
    ``.gz`` suffix on JSONL/JSON/text is decompressed on the fly)."""
    name = path.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    name = name.removesuffix(".gz")
    for suffixes, fmt in ((JSONL_SUFFIXES, "jsonl"), (JSON_SUFFIXES, "json")):
        if name.endswith(suffixes):
            return fmt
    return "text"


def _text_of(obj: Any, path: str, line: int, field: str | None, nbytes: int) -> Record:
    """A record from one parsed JSON object / Parquet row: the text (pretraining) or,
    with ``field=None``, the object itself (SFT conversations)."""
    if not isinstance(obj, dict):
        return Record(path, line, error="not a JSON object", nbytes=nbytes)
    if field is None:
        return Record(path, line, data=obj, nbytes=nbytes)
    if field not in obj and "source" in obj and "target" in obj:
        src, tgt = obj["source"], obj["target"]
        if not isinstance(src, str) or not isinstance(tgt, str):
            return Record(path, line, error="field 'source'/'target' is not a string", nbytes=nbytes)
        if not (src + tgt).strip():
            return Record(path, line, error="empty document", nbytes=nbytes)
        return Record(path, line, source=src, target=tgt, data=obj, nbytes=nbytes)
    if field not in obj:
        return Record(path, line, error=f"missing field '{field}'", nbytes=nbytes)
    text = obj[field]
    if not isinstance(text, str):
        return Record(path, line, error=f"field '{field}' is not a string", nbytes=nbytes)
    if not text.strip():
        return Record(path, line, error="empty document", nbytes=nbytes)
    return Record(path, line, text=text, data=obj, nbytes=nbytes)


def _open(path: str):
    """Binary file handle; ``.gz`` files are decompressed on the fly."""
    if path.endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_bytes(path: str) -> bytes:
    with _open(path) as fh:
        return fh.read()


def _json_error(exc: json.JSONDecodeError) -> str:
    """``malformed JSON (Expecting ',' delimiter at column 17)``: json's message with
    the column (its own ``... at`` messages otherwise end in mid-sentence)."""
    return f"malformed JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})"


def _iter_jsonl(path: str, field: str | None) -> Iterator[Record]:
    with _open(path) as fh:
        raw_fh = getattr(fh, "fileobj", None)  # .gz: the compressed file underneath
        disk = 0  # compressed bytes accounted for so far
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte-order mark
            if not raw.strip():
                continue  # blank lines are not documents
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                rec = Record(path, lineno, error="invalid UTF-8", nbytes=len(raw))
            else:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    rec = Record(path, lineno, error=_json_error(exc), nbytes=len(raw))
                else:
                    rec = _text_of(obj, path, lineno, field, len(raw))
            if raw_fh is not None:  # compressed bytes read since the last record (read in blocks)
                now = raw_fh.tell()
                rec = dataclasses.replace(rec, disk_bytes=now - disk)
                disk = now
            yield rec


def _iter_json(path: str, field: str | None) -> Iterator[Record]:
    raw = _read_bytes(path).removeprefix(b"\xef\xbb\xbf")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        yield Record(path, 1, error="invalid UTF-8", nbytes=len(raw))
        return
    except json.JSONDecodeError as exc:
        yield Record(path, exc.lineno, error=_json_error(exc), nbytes=len(raw))
        return
    items = obj if isinstance(obj, list) else [obj]
    share = len(raw) // max(1, len(items))
    disk = os.path.getsize(path) // max(1, len(items)) if path.endswith(".gz") else None
    for i, item in enumerate(items, 1):  # "line" is the array item number here
        rec = _text_of(item, path, i, field, share)
        yield rec if disk is None else dataclasses.replace(rec, disk_bytes=disk)


def _iter_parquet(path: str, field: str | None) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        yield Record(path, 1, error=f"unreadable Parquet ({type(exc).__name__})")
        return
    size = os.path.getsize(path)
    share = size // max(1, pf.metadata.num_rows)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1024):
            for obj in batch.to_pylist():
                row += 1  # "line" is the 1-based row number here
                yield _text_of(obj, path, row, field, share)
    except Exception as exc:  # a corrupt page or column chunk after a readable footer
        yield Record(path, row + 1, error=f"unreadable Parquet ({type(exc).__name__})")


def _iter_text(path: str, field: str | None) -> Iterator[Record]:
    if field is None:
        yield Record(path, 1, error="plain text is not a conversation (use JSONL)")
        return
    raw = _read_bytes(path).removeprefix(b"\xef\xbb\xbf")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        yield Record(path, line, error="invalid UTF-8", nbytes=len(raw))
        return
    if not text.strip():
        yield Record(path, 1, error="empty document", nbytes=len(raw))
        return
    yield Record(path, 1, text=text, nbytes=len(raw))


def iter_file(path: str, field: str | None = "text") -> Iterator[Record]:
    """Yield every document of one file (a plain-text file is one document);
    ``field=None`` yields JSON objects as they are (``Record.data``), for SFT.

    A file with no record at all (0 bytes, only blank lines, an empty JSON array, a
    Parquet file with no rows, an empty ``.gz``) yields one record with
    ``error="empty file"``, so that it is reported or counted, never silently dropped.
    """
    fmt = file_format(path)
    if fmt == "jsonl":
        records = _iter_jsonl(path, field)
    elif fmt == "json":
        records = _iter_json(path, field)
    elif fmt == "parquet":
        records = _iter_parquet(path, field)
    else:
        records = _iter_text(path, field)
    if os.path.getsize(path) == 0:
        records = iter(())
    whole = os.path.getsize(path) if path.endswith(".gz") and fmt != "jsonl" else None
    empty = True
    line = 0
    try:
        for rec in records:
            empty = False
            line = rec.line
            if whole is not None and rec.disk_bytes is None:  # a .gz read whole: one record for it
                rec = dataclasses.replace(rec, disk_bytes=whole)
            yield rec
    except (OSError, EOFError, zlib.error) as exc:
        if not path.endswith(".gz"):
            raise
        # a truncated or corrupt .gz (or not gzip at all): what follows the last good
        # record cannot be read; one record says so (an error, or counted with skip)
        empty = False
        yield Record(path, line + 1, error=f"unreadable gzip ({exc})")
    if empty:
        yield Record(path, 1, error="empty file", nbytes=os.path.getsize(path))


def no_files_error(pattern: str) -> str:
    """The error of an input that names no file: ``"missing file"``, or for an existing
    folder ``"no input file in folder (reads ...)"`` naming the suffixes read."""
    if os.path.isdir(os.path.expanduser(pattern)):
        suffixes = " ".join(JSONL_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES)
        return f"no input file in folder (reads {suffixes}; all but .parquet also as .gz)"
    return "missing file"


def iter_input(spec: InputSpec, field: str | None = "text", exclude: str | os.PathLike | None = None) -> Iterator[Record]:
    """Every record of every file an input names (:func:`expand`, ``exclude`` as there); a
    glob or path matching nothing yields one record with ``error="missing file"``, a
    folder without a readable file one with ``error="no input file in folder (...)"``."""
    files = expand(spec, exclude)
    if not files:
        yield Record(spec.pattern, 0, error=no_files_error(spec.pattern))
        return
    for path in files:
        yield from iter_file(path, field)
