"""Export: a Hugging Face folder from a live model (``OUT/final/``) or from any
checkpoint (``cpt export``); and ``cpt generate``'s loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CptError
from .integrity import inside

SHARD_SIZE = "2GB"


def is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def save_hf(model: Any, out_dir: str | Path, tokenizer: Any = None, merge_lora: bool = True,
            max_shard_size: int | str = SHARD_SIZE) -> Path:
    """Write ``model`` as a Hugging Face folder: ``model*.safetensors`` (sharded at
    ``max_shard_size``, bytes or HF's syntax ``"500MB"``/``"2GB"``, default 2 GB;
    ``model.safetensors.index.json`` when sharded; tied weights stored once; a tensor
    larger than the limit gets a shard of its own), ``config.json``,
    ``generation_config.json`` and the tokenizer files.

    A peft model is merged into its base first (``merge_and_unload``, which changes the
    live model) when ``merge_lora``; otherwise only the adapter is written, in peft
    format (``adapter_config.json``, ``adapter_model.safetensors``), loadable by
    ``PeftModel.from_pretrained(base, out_dir)``.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ConfigError: ``max_shard_size`` is not a size (:func:`cptcore.units.parse_shard_size`).
    """
    from ..units import parse_shard_size

    shard_bytes = parse_shard_size(max_shard_size, "max_shard_size")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_peft(model) and merge_lora:
        model = model.merge_and_unload()
    model.save_pretrained(str(out), safe_serialization=True, max_shard_size=shard_bytes)
    if not is_peft(model):
        gen = getattr(model, "generation_config", None)
        if gen is not None and not (out / "generation_config.json").exists():
            gen.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def load_checkpoint_weights(model: Any, ckpt_dir: Path) -> None:
    """Load ``ckpt_dir/model`` (the strategy's sharded ``.bin`` shards with
    ``pytorch_model.bin.index.json``) into ``model`` (the unboosted module the
    checkpoint was made from, peft wrapper included), strictly.

    Raises:
        CptError: missing index, a shard name leaving ``model/``, or keys that do not match.
    """
    import json

    import torch

    folder = ckpt_dir / "model"
    index = folder / "pytorch_model.bin.index.json"
    if not index.is_file():
        raise CptError(f"{ckpt_dir}: no model/pytorch_model.bin.index.json (not a cptcore checkpoint folder)")

    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state: dict = {}
    for name in files:  # names from the index: each must stay inside model/
        state.update(torch.load(inside(folder, str(name), f"shard name in {index.name}"), map_location="cpu",
                                weights_only=True))
    target = model.get_base_model() if is_peft(model) else model
    own = target.state_dict()
    # ColossalAI's DDP checkpoint I/O saves a peft model as its base model's state dict
    # with peft's "base_layer." infix removed (colossalai/interface/model.py PeftUnwrapMixin)
    plain_to_own = {k.replace("base_layer.", ""): k for k in own if "base_layer." in k}
    state = {plain_to_own.get(k, k): v for k, v in state.items()}
    missing = [k for k in own if k not in state]
    # tied weights are saved once; tolerate the tied alias only
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied:
        raise CptError(f"{ckpt_dir}: checkpoint lacks {len(set(missing) - tied)} weights of the model, e.g. {sorted(set(missing) - tied)[:2]}")
    result = target.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CptError(f"{ckpt_dir}: unexpected weights {result.unexpected_keys[:2]}")
