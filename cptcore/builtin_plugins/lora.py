"""Built-in LoRA: wraps ``cpt_build_model`` (``wrapper=True``) to add peft adapters to
whatever model the provider returned, when ``lora.enabled`` is true.

Adapters are saved in peft's own format (``adapter_config.json`` +
``adapter_model.safetensors``) in every checkpoint (``step-N/adapter/``) and, unless
merged, in ``OUT/final/``; ``PeftModel.from_pretrained(base, folder)`` loads them.
"""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..errors import ConfigError


def add_lora(model, lora_cfg):
    """Wrap ``model`` in a ``peft.PeftModel`` with a LoRA adapter (Hu et al. 2021).

    ``lora_cfg`` is :class:`cptcore.config.LoraConfig`: ``r``, ``alpha``, ``dropout``,
    ``target_modules``, ``use_rslora`` (rank-stabilised scaling ``alpha / sqrt(r)``,
    Kalajdzievski 2023), ``use_dora`` (weight-decomposed LoRA, Liu et al. 2024: adds a
    trainable ``lora_magnitude_vector`` per adapted layer); ``train_embeddings`` also trains the input embeddings (and a
    separate output head when embeddings are untied) fully, as peft ``modules_to_save``.

    Raises:
        ConfigError: a target module name matches nothing in the model.
    """
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in lora_cfg.target_modules if t not in names]
    if missing:
        raise ConfigError(f"lora.target_modules: {missing} match no module of the model")
    to_save = None
    if lora_cfg.train_embeddings:
        to_save = ["embed_tokens"]
        if not getattr(model.config, "tie_word_embeddings", False):
            to_save.append("lm_head")
    cfg = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        modules_to_save=to_save,
        task_type="CAUSAL_LM",
        use_rslora=bool(lora_cfg.use_rslora),
        use_dora=bool(lora_cfg.use_dora),
    )
    peft_model = get_peft_model(model, cfg)
    for attr in ("cpt_attn_implementation", "cpt_source_folder"):
        if hasattr(model, attr):
            setattr(peft_model, attr, getattr(model, attr))
    return peft_model


@hookimpl(wrapper=True)
def cpt_build_model(config):
    model = yield
    if model is None or getattr(getattr(config, "lora", None), "enabled", False) is not True:
        return model
    return add_lora(model, config.lora)
