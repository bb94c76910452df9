"""Load the model to train: a Hugging Face folder or a GGUF file.

Used by the built-in ``cpt_build_model`` provider (``cptcore/builtin_plugins/hf_model.py``).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, CptError
from ..assets import cache_dir
from ..train.integrity import inside
from . import gguf as gguf_module  # looked up at call time (tests patch gguf.import_gguf)

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def check_model_path(path: str) -> Path:
    """Cheap existence check before any heavy import.

    Raises:
        ConfigError: empty path, missing path, a folder without ``config.json``, or a
            file that is not ``.gguf``.
    """
    if not path:
        raise ConfigError("model.path is not set (use --model PATH or model.path in the config)")
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"model not found: {p}")
    if p.is_dir() and not (p / "config.json").is_file():
        raise ConfigError(f"model folder {p} has no config.json (not a Hugging Face folder)")
    if p.is_file() and p.suffix != ".gguf":
        raise ConfigError(f"model file {p} is not a .gguf file (give a Hugging Face folder or a GGUF file)")
    return p


def check_model_files(folder: str | Path) -> Path:
    """Refuse a model folder whose weight index names a file outside it (transformers
    joins ``*.index.json`` shard names to the folder unchecked, ``utils/hub.py:1110``,
    so ``"../../x.bin"`` would be read from anywhere). Weights themselves are read by
    transformers with safetensors or ``torch.load(weights_only=True)`` (its default).

    Raises:
        CptError: an unreadable index, or a shard name leaving the folder.
    """
    import json

    folder = Path(folder)
    for index in sorted(folder.glob("*.index.json")):
        try:
            names = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise CptError(f"{index}: unreadable weight index ({type(exc).__name__}: {exc})") from exc
        for name in sorted(map(str, names)):
            inside(folder, name, f"shard name in {index.name}")
    return folder


def resolve_hf_folder(path: str) -> Path:
    """An HF folder for ``path``: itself, or for a ``.gguf`` file a clean folder imported
    once with :func:`cptcore.model.gguf.import_gguf` into the cache
    (``$CPT_CACHE_DIR/gguf/<sha of path, size, mtime>``)."""
    p = check_model_path(path)
    if p.is_dir():
        return p

    st = p.stat()
    key = hashlib.sha256(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_dir() / "gguf" / key
    from filelock import FileLock

    # several ranks (or runs) may start at once: one imports, the others wait for it
    with FileLock(str(out) + ".lock"):
        if not (out / "config.json").is_file() or not (out / "tokenizer.json").is_file():
            print(f"cptcore: importing {p.name} into {out} (once)", file=sys.stderr)
            gguf_module.import_gguf(p, out, overwrite=True)
    return out


#: the compute dtypes FlashAttention-2 kernels accept (flash-attn's README: "fp16 and bf16")
FLASH_DTYPES = ("bf16", "fp16")


def flash_attn_installed() -> bool:
    """Whether the ``flash_attn`` package can be imported (found, not imported)."""
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def compute_dtype(model_dtype: str, precision: str | None) -> str:
    """The dtype attention runs in: the strategy's mixed ``precision`` (bf16/fp16, under
    autocast or in half weights) when it is one, else the weights' ``model.dtype``."""
    return precision if precision in FLASH_DTYPES else model_dtype


def choose_attention(requested: str, dtype: str = "bf16") -> tuple[str, str]:
    """Pick the attention implementation for compute dtype ``dtype`` (fp32 | bf16 | fp16,
    see :func:`compute_dtype`).

    ``auto``: ``flash_attention_2`` when the ``flash_attn`` package imports, CUDA is
    available and ``dtype`` is bf16/fp16 (variable-length kernels keep packed documents
    apart from ``position_ids``), else ``sdpa`` (with the block-diagonal 4-D mask built by
    the collate). FlashAttention-2 takes fp16/bf16 only, so fp32 picks ``sdpa``.

    Returns:
        ``(implementation, one-line reason)``.

    Raises:
        ConfigError: ``flash_attention_2`` requested without flash-attn, without CUDA, or
            with an fp32 compute dtype (naming the fix); unknown name.
    """
    if requested not in ("auto", "sdpa", "eager", "flash_attention_2"):
        raise ConfigError(f"model.attn_implementation: unknown '{requested}' (auto, sdpa, eager, flash_attention_2)")
    if requested in ("sdpa", "eager"):
        return requested, "as configured"
    have_fa, cuda = flash_attn_installed(), cuda_available()
    if requested == "auto":
        if have_fa and cuda and dtype in FLASH_DTYPES:
            return "flash_attention_2", "flash-attn is installed and CUDA is available (varlen kernels from position_ids)"
        if not have_fa:
            why = "flash-attn is not installed"
        elif not cuda:
            why = "CUDA is not available"
        else:
            why = f"FlashAttention-2 takes fp16/bf16 only and this run computes in {dtype}"
        return "sdpa", f"{why}; packed documents are separated by a block-diagonal mask"
    if not have_fa:
        raise ConfigError("model.attn_implementation=flash_attention_2 needs the flash-attn package "
                          "(pip install flash-attn, CUDA only); or set model.attn_implementation=sdpa")
    if not cuda:
        raise ConfigError("model.attn_implementation=flash_attention_2 needs CUDA, and this machine has none: "
                          "set model.attn_implementation=sdpa (or auto)")
    if dtype not in FLASH_DTYPES:
        raise ConfigError(f"model.attn_implementation=flash_attention_2 takes fp16/bf16 only, and this run computes "
                          f"in {dtype}: set strategy.precision=bf16 (or model.attn_implementation=sdpa)")
    return requested, "as configured"


def load_model(model_cfg: Any, log: Any = print, precision: str | None = None) -> Any:
    """Load the causal LM described by ``model_cfg`` (:class:`cptcore.config.ModelConfig`).

    Weights in ``model_cfg.dtype``; attention from :func:`choose_attention` for the
    compute dtype of ``model_cfg.dtype`` and the strategy's ``precision`` (one line
    logged through ``log``); ``trust_remote_code`` only when set. Gradient checkpointing
    is enabled here (non-reentrant) when asked; it is active only in train mode, which
    the loop sets before every training forward.

    Returns:
        ``transformers.PreTrainedModel`` with ``model.cpt_attn_implementation`` set.

    Raises:
        ConfigError: bad path or dtype. CptError: a weight index naming a file outside the
            folder, or weights transformers cannot (or, being pickles with code, will not) load.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if model_cfg.dtype not in DTYPES:
        raise ConfigError(f"model.dtype: unknown '{model_cfg.dtype}' (fp32, bf16, fp16)")
    folder = check_model_files(resolve_hf_folder(model_cfg.path))
    impl, why = choose_attention(model_cfg.attn_implementation, compute_dtype(model_cfg.dtype, precision))
    log(f"attention: {impl} ({why})")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder),
            torch_dtype=getattr(torch, DTYPES[model_cfg.dtype]),
            attn_implementation=impl,
            trust_remote_code=model_cfg.trust_remote_code,
        )
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ConfigError(f"{folder} needs custom code; set model.trust_remote_code=true if you trust it") from exc
        raise
    except OSError as exc:  # transformers' wrapper for unreadable or refused (pickle) weight files
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise CptError(f"{folder}: cannot load the model weights ({first})") from exc
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.cpt_attn_implementation = impl
    model.cpt_source_folder = str(folder)
    return model


def load_tokenizer(model_cfg: Any) -> Any:
    """The tokenizer of ``model_cfg.tokenizer`` or else of the model folder (GGUF: the
    imported folder).

    Raises:
        CptError: no tokenizer found there.
    """
    from transformers import AutoTokenizer

    where = model_cfg.tokenizer or str(resolve_hf_folder(model_cfg.path))
    if not Path(where).exists():  # else tried as a hub id, with retries
        raise CptError(f"tokenizer not found: {where} (no such folder)")
    if Path(where).is_file():
        raise CptError(f"cannot load a tokenizer from {where}: a file, not a tokenizer folder")
    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise CptError(f"cannot load a tokenizer from {where}: {str(exc).splitlines()[0]}") from exc
