"""Built-in ``cpt_save`` provider (``trylast``): a Hugging Face folder with sharded
safetensors, config, generation config and tokenizer, via :func:`cptcore.train.export.save_hf`."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..train.export import SHARD_SIZE, save_hf


@hookimpl(trylast=True)
def cpt_save(model, out_dir, config, tokenizer):
    merge = bool(config.lora.merge_on_export) if config is not None else True
    shard = config.training.max_shard_size if config is not None else SHARD_SIZE
    return save_hf(model, out_dir, tokenizer, merge_lora=merge, max_shard_size=shard)
