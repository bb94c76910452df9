"""Output-folder policy shared by the commands that write a model or tokenizer folder."""

from __future__ import annotations

from pathlib import Path

from ..errors import CptError

#: Files a previous model/tokenizer save may have left that a new save would not replace.
STALE_PATTERNS = (
    "*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "tokenizer.model",
    "tokenizer.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)


def prepare_out_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """Create ``out_dir`` for writing, refusing a non-empty one unless ``overwrite``.

    With ``overwrite`` the folder is kept, but weight and tokenizer files a previous save
    may have left (:data:`STALE_PATTERNS`) are deleted so they cannot mix with the new
    ones. Nothing else in the folder is touched.

    Raises:
        CptError: ``out_dir`` exists and is not empty, and ``overwrite`` is False; or it
            exists and is not a folder.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CptError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise CptError(f"output folder {out} exists and is not empty (pass --overwrite to replace it)")
        for pattern in STALE_PATTERNS:
            for stale in out.glob(pattern):
                if stale.is_file():
                    stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def prepare_out_file(path: str | Path, flag: str) -> Path:
    """Make ``path`` writable as a report file *before* the work that produces it: its
    parent folders are created; a long run then cannot end in a traceback because the
    folder is missing.

    Raises:
        CptError: ``path`` is a folder, or a parent is a file or cannot be created
            (``flag`` names the option in the message).
    """
    p = Path(path)
    if p.is_dir():
        raise CptError(f"{flag} {p}: is a folder, expected a file name")
    blocker = next((a for a in p.parents if a.exists() and not a.is_dir()), None)
    if blocker is not None:
        raise CptError(f"{flag} {p}: {blocker} is a file, not a folder")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CptError(f"{flag} {p}: cannot create its folder {p.parent} ({exc.strerror or exc})") from None
    return p
