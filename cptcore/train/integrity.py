"""Checkpoint integrity: per-file SHA-256 checksums, fsync before the completing rename,
and paths read from files that must stay inside their folder.

``checksums.sha256`` (one per checkpoint folder) is in the format of GNU coreutils'
``sha256sum`` (text mode): one line per file, ``<64 lowercase hex digits><two spaces>
<path relative to the folder, '/'-separated>``, sorted by path, covering every regular
file of the folder except itself. ``cd step-N && sha256sum -c checksums.sha256`` checks a
checkpoint without cptcore; :func:`verify_checksums` is what resume and export run.

Torch-free: hashlib, os and pathlib only.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from ..errors import CptError

CHECKSUMS = "checksums.sha256"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_CHUNK = 1 << 20  # bytes read per hashlib update


class DamagedCheckpoint(CptError):
    """A checkpoint file does not match its recorded checksum, is missing, or is not
    listed (the message names the file)."""


def inside(folder: str | Path, rel: str, what: str = "path") -> Path:
    """``folder / rel``, refusing a ``rel`` read from a file (an index, a manifest, a
    checksum list) that leaves ``folder``: absolute paths, ``..`` components and symlinks
    pointing outside are all refused.

    Raises:
        CptError: ``<folder>: <what> '<rel>' points outside the folder``.
    """
    base = Path(folder).resolve()
    if not rel or os.path.isabs(rel) or "\\" in rel or "\x00" in rel:
        raise CptError(f"{folder}: {what} {rel!r} points outside the folder (only relative names inside it are allowed)")
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise CptError(f"{folder}: {what} {rel!r} points outside the folder (only relative names inside it are allowed)")
    return base / rel


def check_tree(folder: str | Path) -> None:
    """Refuse a folder holding a symlink (to a file or a folder) that resolves outside
    it, or an entry that is neither a folder nor a regular file (a FIFO would block the
    reader, a device never ends). Reads no file; run it before reading anything from
    ``folder``.

    Raises:
        DamagedCheckpoint: ``<folder>: symlink '<rel>' points outside the folder ...`` or
            ``<folder>/<rel>: not a regular file``.
    """
    folder = Path(folder)
    for root, dirs, names in os.walk(folder):
        for name in sorted(dirs + names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if os.path.islink(full):
                try:
                    inside(folder, rel, "symlink")
                except CptError as exc:
                    raise DamagedCheckpoint(str(exc)) from None
            if not (os.path.isdir(full) or os.path.isfile(full)):
                raise DamagedCheckpoint(f"{full}: not a regular file (a checkpoint holds only files and folders)")


def _files(folder: Path) -> list[str]:
    out = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if rel != CHECKSUMS:
                out.append(rel)
    return sorted(out)


def sha256_file(path: str | Path, fsync: bool = False) -> str:
    """Hex SHA-256 of a file's bytes; with ``fsync`` also flush it to disk (``os.fsync``
    on the descriptor used for reading, which flushes the file whoever wrote it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()


def fsync_dir(path: str | Path) -> None:
    """fsync a directory (its entries: created, renamed files) where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _hash_all(folder: Path, names: Iterable[str], fsync: bool) -> dict[str, str]:
    names = list(names)
    # hashlib releases the GIL on large updates: a few threads hash several shards at once
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(names)))) as pool:
        digests = pool.map(lambda n: sha256_file(folder / n, fsync), names)
        return dict(zip(names, digests))


def write_checksums(folder: str | Path) -> Path:
    """Hash (and fsync) every file under ``folder``, write ``checksums.sha256`` (fsync'ed),
    then fsync every directory of the folder. Call when every file is written, before the
    rename that completes the checkpoint.

    Returns:
        the checksum file's path.
    """
    folder = Path(folder)
    digests = _hash_all(folder, _files(folder), fsync=True)
    path = folder / CHECKSUMS
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{digest}  {name}\n" for name, digest in sorted(digests.items())))
        f.flush()
        os.fsync(f.fileno())
    for root, _, _ in os.walk(folder):
        fsync_dir(root)
    return path


def read_checksums(folder: str | Path) -> dict[str, str]:
    """``{relative path: hex sha256}`` from ``folder/checksums.sha256``.

    Raises:
        DamagedCheckpoint: no checksum file, a malformed line (named by line number), or
            a listed path outside the folder.
    """
    folder = Path(folder)
    path = folder / CHECKSUMS
    if not path.is_file():
        raise DamagedCheckpoint(f"{folder}: no {CHECKSUMS} (the checkpoint cannot be verified; saved by cptcore < 0.2?)")
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedCheckpoint(f"{path}: unreadable ({exc})") from exc
    for n, line in enumerate(text.splitlines(), 1):
        m = _LINE.match(line)
        if not m:
            raise DamagedCheckpoint(f"{path}:{n}: not a sha256sum line (<64 hex> <2 spaces> <path>)")
        try:
            inside(folder, m.group(2), "checksum entry")
        except CptError as exc:
            raise DamagedCheckpoint(f"{path}:{n}: {exc}") from None
        out[m.group(2)] = m.group(1)
    return out


def verify_checksums(folder: str | Path) -> dict[str, str]:
    """Check every file of ``folder`` against ``checksums.sha256``.

    Returns:
        the checksum table.

    Raises:
        DamagedCheckpoint: naming the first file (sorted) that is missing, differs, or is
            present but not listed.
    """
    folder = Path(folder)
    check_tree(folder)
    table = read_checksums(folder)
    present = set(_files(folder))
    for name in sorted(table):
        if name not in present:
            raise DamagedCheckpoint(f"{folder / name}: missing (listed in {CHECKSUMS})")
    for name in sorted(present - set(table)):
        raise DamagedCheckpoint(f"{folder / name}: not listed in {CHECKSUMS} (added after the save?)")
    digests = _hash_all(folder, sorted(table), fsync=False)
    for name in sorted(table):
        if digests[name] != table[name]:
            raise DamagedCheckpoint(
                f"{folder / name}: checksum mismatch, the file is damaged "
                f"(sha256 {digests[name][:12]}..., recorded {table[name][:12]}...)")
    return table
