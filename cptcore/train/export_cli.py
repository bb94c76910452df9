"""``cpt export CHECKPOINT`` and ``cpt generate MODEL`` (single process, no Booster)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from ..config import load_config
from ..errors import ConfigError, CptError
from ..model.load import check_model_files, check_model_path, load_tokenizer, resolve_hf_folder
from ..model.outdir import prepare_out_dir
from ..plugins import make_plugin_manager
from ..registries import call_provider
from .build import build_model
from .checkpoint import STATE, unreadable_as_error, validate_checkpoint
from .export import is_peft, load_checkpoint_weights


def checkpoint_config(ckpt: Path, model: str | None = None, tokenizer: str | None = None,
                      trust_remote_code: bool = False) -> Any:
    """The run config stored in ``ckpt/config.yaml``, made safe to build from.

    A checkpoint is something people share, so nothing in its ``config.yaml`` may decide
    to run code or pick a model folder relative to wherever it was unpacked:
    ``model.trust_remote_code`` is replaced by ``trust_remote_code`` (the command line's
    ``--trust-remote-code``), and ``model.path``/``model.tokenizer`` must be absolute
    paths outside the checkpoint folder unless ``model``/``tokenizer`` (``--model``,
    ``--tokenizer``) replace them.

    Raises:
        ConfigError: a relative model or tokenizer path, or one inside the checkpoint.
    """

    config = load_config(ckpt / "config.yaml")
    root = ckpt.resolve()
    chosen = {"path": model, "tokenizer": tokenizer}
    values = {}
    for key, flag in (("path", "--model"), ("tokenizer", "--tokenizer")):
        value = chosen[key] if chosen[key] is not None else getattr(config.model, key)
        if chosen[key] is None and value:
            where = Path(value)
            if not where.is_absolute():
                raise ConfigError(f"{ckpt / 'config.yaml'}: model.{key} {value!r} is a relative path, which cpt export "
                                  f"does not follow from a checkpoint; give the base model with {flag} PATH")
            if where.resolve() == root or root in where.resolve().parents:
                raise ConfigError(f"{ckpt / 'config.yaml'}: model.{key} {value!r} points inside the checkpoint, "
                                  f"which cpt export does not load from; give the base model with {flag} PATH")
        values[key] = value
    model_cfg = dataclasses.replace(config.model, path=values["path"], tokenizer=values["tokenizer"],
                                    trust_remote_code=trust_remote_code)
    return dataclasses.replace(config, model=model_cfg)


def export_checkpoint(pm: Any, checkpoint: str | Path, out: str | Path, merge_lora: bool = False,
                      model: str | None = None, tokenizer: str | None = None,
                      trust_remote_code: bool = False, max_shard_size: str | None = None) -> Path:
    """Verify the checkpoint (checksums, see docs/security.md), rebuild the model from its
    ``config.yaml`` (:func:`checkpoint_config`; ``cpt_build_model``, so LoRA wraps it
    again), load the checkpoint's weights, and write a Hugging Face folder through
    ``cpt_save``. With LoRA and no ``merge_lora`` the folder holds the peft adapter; with
    ``merge_lora`` full merged weights. ``max_shard_size`` (HF syntax, ``"500MB"``)
    replaces the checkpoint config's ``training.max_shard_size``.

    Raises:
        CptError: incomplete or damaged checkpoint (naming the file), non-empty ``out``,
            weights that do not match, an unsafe model path in the checkpoint's config.
    """
    import torch

    ckpt = Path(checkpoint)
    validate_checkpoint(ckpt)
    config = checkpoint_config(ckpt, model, tokenizer, trust_remote_code)
    config = dataclasses.replace(config, lora=dataclasses.replace(config.lora, merge_on_export=merge_lora))
    if max_shard_size is not None:
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, max_shard_size=max_shard_size))
    from ..units import parse_shard_size

    parse_shard_size(config.training.max_shard_size, "training.max_shard_size")
    if Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        # `cpt export` has no --overwrite (prepare_out_dir's own message suggests one)
        raise CptError(f"output folder {out} exists and is not empty: choose another --out or delete it")

    check_model_path(config.model.path)
    out_dir = prepare_out_dir(out, overwrite=False)
    torch.manual_seed(config.training.seed)
    built = build_model(config, pm)
    with unreadable_as_error(ckpt):
        load_checkpoint_weights(built, ckpt)
    tok = load_tokenizer(config.model)
    return call_provider(pm, "cpt_save", model=built, out_dir=out_dir, config=config, tokenizer=tok)


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a cptcore checkpoint folder (``OUT/checkpoints/step-N``: it
    holds ``trainer_state.json`` or ``config.yaml`` beside ``model/``), not a Hugging
    Face folder."""
    p = Path(path)

    return p.is_dir() and not (p / "config.json").is_file() and (
        (p / STATE).is_file() or ((p / "config.yaml").is_file() and (p / "model").is_dir()))


def model_from_checkpoint(pm: Any, checkpoint: str | Path, merge_lora: bool = False) -> tuple[Any, Any, Any]:
    """The model of a checkpoint folder, in memory: rebuilt from its ``config.yaml``
    through ``cpt_build_model`` (LoRA wraps it again), its weights loaded with
    :func:`cptcore.train.export.load_checkpoint_weights` (``torch.load(weights_only=True)``:
    nothing in the checkpoint is executed), and the run's tokenizer. The base model the
    run started from (``model.path`` in ``config.yaml``) must still be there.

    Returns:
        ``(model, tokenizer, config)``: the unboosted module (peft wrapper included),
        the tokenizer and the checkpoint's :class:`cptcore.config.RunConfig`.

    Raises:
        CptError: incomplete or corrupt checkpoint, weights that do not match the model.
    """
    import torch

    ckpt = Path(checkpoint)
    validate_checkpoint(ckpt)
    config = checkpoint_config(ckpt)  # the safety rules of cpt export (absolute model path, no remote code)
    config = dataclasses.replace(config, lora=dataclasses.replace(config.lora, merge_on_export=merge_lora))
    torch.manual_seed(config.training.seed)
    model = build_model(config, pm)
    with unreadable_as_error(ckpt):
        load_checkpoint_weights(model, ckpt)
    return model, load_tokenizer(config.model), config


def forward_inputs(model: Any, encoded: Any) -> dict:
    """The entries of a tokenizer's output that ``model``'s forward names as parameters
    (a peft model: its base model's). Tokenizers may return more than a causal LM takes
    (``token_type_ids`` from a ``PreTrainedTokenizerFast`` folder), which ``generate``
    refuses; a forward that takes ``**kwargs`` does not make those accepted.

    Returns:
        ``{name: tensor}`` restricted to the forward's named parameters.
    """
    import inspect

    base = model.get_base_model() if is_peft(model) else model
    named = {n for n, p in inspect.signature(base.forward).parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in dict(encoded).items() if k in named}


def generate(model_path: str, prompts: Sequence[str], max_new_tokens: int = 40, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0, pm: Any = None) -> list[str]:
    """Greedy (``temperature == 0``) or sampled continuations, one string per prompt
    (prompt + completion, special tokens dropped). ``model_path`` is a Hugging Face
    folder, a GGUF file, a folder holding only a peft adapter (loaded on its base model,
    ``adapter_config.json``'s ``base_model_name_or_path``), or a checkpoint folder
    ``OUT/checkpoints/step-N`` (:func:`model_from_checkpoint`, with ``pm``: default the
    built-in and installed plugins). Only the tokenizer outputs the model's forward
    takes are passed on (:func:`forward_inputs`).

    Raises:
        ConfigError: bad path, ``max_new_tokens < 1``, ``temperature < 0``, ``top_p``
            outside (0, 1], or a prompt that encodes to no token (empty, and the
            tokenizer adds no BOS).
        CptError: ``model_path`` is an incomplete or corrupt checkpoint.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not temperature >= 0:
        raise ConfigError(f"--temperature must be >= 0 (0: greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {top_p}")

    p = Path(model_path)
    tokenizer = None
    if is_checkpoint(p):
        if pm is None:
            pm = make_plugin_manager()
        model, tokenizer, _ = model_from_checkpoint(pm, p)
    elif (p / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(p))
        tok_dir = p if (p / "tokenizer_config.json").is_file() else model.peft_config["default"].base_model_name_or_path
    else:
        check_model_path(model_path)
        folder = check_model_files(resolve_hf_folder(model_path))
        model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=False)
        tok_dir = folder
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    model.eval()
    torch.manual_seed(seed)
    encoded = [tokenizer(prompt, return_tensors="pt") for prompt in prompts]
    for prompt, enc in zip(prompts, encoded):
        if enc["input_ids"].shape[1] == 0:
            raise ConfigError(f"--prompt {prompt!r} encodes to no token (this tokenizer adds no BOS): give some text")
    # a pad id of 0 is a real id (`or` took it for missing and padded with EOS instead)
    pad_id = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    outs = []
    for enc in encoded:
        kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False)
        with torch.no_grad():
            ids = model.generate(**forward_inputs(model, enc), **kwargs)
        outs.append(decode_complete(tokenizer, ids[0].tolist()))
    return outs


REPLACEMENT_CHAR = "\ufffd"


def decode_complete(tokenizer: Any, ids: Sequence[int]) -> str:
    """Decode ``ids`` (special tokens skipped), dropping trailing tokens that hold only
    part of a multi-byte UTF-8 character (cut at ``max_new_tokens``), which would
    otherwise decode to a trailing U+FFFD. At most 3 tokens are dropped (a character is
    at most 4 bytes). A literal U+FFFD generated as the very last character is dropped
    too (the decoded string cannot tell it from a cut one; it carries no text anyway).
    """
    ids = list(ids)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if not text.endswith(REPLACEMENT_CHAR):
        return text
    for cut in range(1, min(3, len(ids)) + 1):
        shorter = tokenizer.decode(ids[:-cut], skip_special_tokens=True)
        if not shorter.endswith(REPLACEMENT_CHAR):
            return shorter
    return text
