"""``cpt export CHECKPOINT`` and ``cpt generate MODEL`` (single process, no Booster)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence



def export_checkpoint(pm: Any, checkpoint: str | Path, out: str | Path, merge_lora: bool = False) -> Path:
    """Rebuild the model from the checkpoint's ``config.yaml`` (``cpt_build_model``, so
    LoRA wraps it again), load the checkpoint's weights, and write a Hugging Face folder
    through ``cpt_save``. With LoRA and no ``merge_lora`` the folder holds the peft
    adapter; with ``merge_lora`` full merged weights.

    Raises:
        CptError: incomplete checkpoint, non-empty ``out``, weights that do not match.
    """
    import torch

    from ..config import load_config
    from ..model.load import load_tokenizer
    from ..model.outdir import prepare_out_dir
    from ..registries import call_provider
    from .build import build_model
    from .checkpoint import validate_checkpoint
    from .export import load_checkpoint_weights

    ckpt = Path(checkpoint)
    validate_checkpoint(ckpt)
    config = load_config(ckpt / "config.yaml")
    config = dataclasses.replace(config, lora=dataclasses.replace(config.lora, merge_on_export=merge_lora))
    out_dir = prepare_out_dir(out, overwrite=False)
    torch.manual_seed(config.training.seed)
    model = build_model(config, pm)
    load_checkpoint_weights(model, ckpt)
    tokenizer = load_tokenizer(config.model)
    return call_provider(pm, "cpt_save", model=model, out_dir=out_dir, config=config, tokenizer=tokenizer)


def generate(model_path: str, prompts: Sequence[str], max_new_tokens: int = 40, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0) -> list[str]:
    """Greedy (``temperature == 0``) or sampled continuations, one string per prompt
    (prompt + completion, special tokens dropped). A folder holding only a peft adapter is
    loaded on its base model (``adapter_config.json``'s ``base_model_name_or_path``).

    Raises:
        ConfigError: bad path.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..model.load import check_model_path, resolve_hf_folder

    p = Path(model_path)
    if (p / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(p))
        tok_dir = p if (p / "tokenizer_config.json").is_file() else model.peft_config["default"].base_model_name_or_path
    else:
        check_model_path(model_path)
        folder = resolve_hf_folder(model_path)
        model = AutoModelForCausalLM.from_pretrained(str(folder))
        tok_dir = folder
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    model.eval()
    torch.manual_seed(seed)
    outs = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt")
        kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False)
        with torch.no_grad():
            ids = model.generate(**enc, **kwargs)
        outs.append(tokenizer.decode(ids[0], skip_special_tokens=True))
    return outs
