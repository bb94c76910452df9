"""Write complete Hugging Face tokenizer folders for expanded vocabularies.

* SentencePiece: ``tokenizer.model`` (slow, ``LlamaTokenizer``) plus ``tokenizer.json``
  (fast), converted by transformers from the merged model, so ``AutoTokenizer`` (fast or
  ``use_fast=False``) loads either. The base folder's tokenizer settings (special tokens,
  ``add_bos_token``, ``legacy``, chat template) are kept; a bare ``.model`` base gets
  LLaMA defaults (BOS added, no EOS, ``legacy=False``, i.e. sentencepiece behaviour).
* Byte-level BPE: ``tokenizer.json`` (fast) plus ``vocab.json``/``merges.txt`` (slow
  ``GPT2Tokenizer`` files written by ``save_pretrained``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

#: Files of a base tokenizer folder carried over to the expanded one.
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.json", "chat_template.jinja")


def copy_tokenizer_config(base_dir: Path, out: Path) -> None:
    """Copy :data:`CONFIG_FILES` that exist in ``base_dir`` to ``out``."""
    for name in CONFIG_FILES:
        src = base_dir / name
        if src.is_file():
            shutil.copyfile(src, out / name)


def write_sentencepiece_folder(model_bytes: bytes, base: Path, out: Path):
    """Write ``out/tokenizer.model`` and the fast ``tokenizer.json`` converted from it.

    ``base`` is the base tokenizer folder (its config is kept) or a ``.model`` file.

    Returns:
        The fast tokenizer loaded back from ``out``.
    """
    from transformers import AutoTokenizer, LlamaTokenizer

    (out / "tokenizer.model").write_bytes(model_bytes)
    if base.is_dir() and (base / "tokenizer_config.json").is_file():
        copy_tokenizer_config(base, out)  # added-token ids stay valid: new ids are appended
    else:
        LlamaTokenizer(vocab_file=str(out / "tokenizer.model"), legacy=True).save_pretrained(out)
    stale = out / "tokenizer.json"
    if stale.exists():
        stale.unlink()
    fast = AutoTokenizer.from_pretrained(out, use_fast=True)  # converts tokenizer.model -> fast
    fast.save_pretrained(out)
    drop_default_prefix_space(out / "tokenizer_config.json")
    return AutoTokenizer.from_pretrained(out, use_fast=True)


def drop_default_prefix_space(config_path: Path) -> None:
    """Remove ``"add_prefix_space": true`` from a Llama tokenizer config.

    ``LlamaTokenizerFast`` (transformers 4.51) re-converts ``tokenizer.model`` on *every*
    load when the key is present (~1 s for 32k pieces), ignoring ``tokenizer.json``. True
    is the slow tokenizer's default and the saved ``tokenizer.json`` already encodes it
    (Prepend normalizer or Metaspace pre-tokenizer), so dropping it changes no ids.
    """
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("add_prefix_space") is True:
        del config["add_prefix_space"]
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_fast_folder(tokenizer_json: dict, base_dir: Path, out: Path):
    """Write ``tokenizer.json`` from ``tokenizer_json`` with ``base_dir``'s config, then
    let transformers save the complete folder (slow files where the class has them).

    Returns:
        The tokenizer loaded back from ``out``.
    """
    from transformers import AutoTokenizer

    copy_tokenizer_config(base_dir, out)
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(out)
    tok.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)
