"""``cpt tokenizer expand``: pick the method for the base tokenizer, merge, save the
Hugging Face folder, measure and report.

Methods: ``sentencepiece`` (ModelProto merge, :mod:`.expand_sp`) for a ``.model`` file
or a folder with ``tokenizer.model``; ``bpe`` (vocab + merges, :mod:`.expand_bpe`) for a
folder whose ``tokenizer.json`` is byte-level BPE; ``auto`` picks in that order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CptError, DataError
from ..model.outdir import prepare_out_dir
from .report import compression, hf_encoder, read_eval_texts, write_report
from .sources import read_candidates
from .expand_bpe import expand_byte_level_bpe
from .expand_sp import merge_into_sentencepiece, sentencepiece_file
from .hf_folder import write_fast_folder, write_sentencepiece_folder

METHODS = ("auto", "sentencepiece", "bpe")
REPORT_NAME = "expand_report.json"


def detect_method(base: Path) -> str:
    """``sentencepiece`` or ``bpe`` for ``base`` (see module docstring).

    Raises:
        CptError: ``base`` is missing or is neither kind.
    """
    if base.is_file():
        return "sentencepiece"
    if base.is_dir():
        if (base / "tokenizer.model").is_file():
            return "sentencepiece"
        if (base / "tokenizer.json").is_file():
            return "bpe"
        raise CptError(f"base tokenizer {base} has neither tokenizer.model nor tokenizer.json")
    raise CptError(f"base tokenizer not found: {base}")


def _folder_specials(base: Path) -> set[str]:
    """Special-token strings named in a base folder's tokenizer config files."""
    found: set[str] = set()
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        p = base / name
        if not p.is_file():
            continue
        data = json.loads(p.read_text(encoding="utf-8"))
        for key, value in data.items():
            if key.endswith("_token") and isinstance(value, (str, dict)):
                found.add(value if isinstance(value, str) else value.get("content", ""))
            elif key == "additional_special_tokens" and isinstance(value, list):
                found.update(v if isinstance(v, str) else v.get("content", "") for v in value)
            elif key == "added_tokens_decoder" and isinstance(value, dict):
                found.update(v.get("content", "") for v in value.values() if v.get("special"))
    found.discard("")
    return found


def _sp_encoder(model_bytes: bytes):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    return lambda texts: sp.encode(texts) if texts else []


def expand_tokenizer(
    base: str | Path,
    add: str | Path,
    out: str | Path,
    *,
    method: str = "auto",
    target_vocab: int | None = None,
    eval_text: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Expand ``base`` with the pieces of ``add`` (see :mod:`.sources`) into folder
    ``out`` and write ``out/expand_report.json``.

    Returns:
        The report: method, vocab_before/after, added, intermediate, skipped by reason,
        first added pieces, and (with ``eval_text``) tokens per character before/after
        (:func:`.report.compression`); for SentencePiece also the number of eval-text
        lines on which the saved fast tokenizer and sentencepiece disagree (expected 0;
        a base folder saved with ``legacy=False`` differs on lines starting with spaces).

    Raises:
        CptError: unknown method, base not of the method's kind, target vocabulary
            smaller than the base, ``out`` not empty without ``overwrite``.
        DataError: unreadable token source or evaluation text (``path:line``).
    """
    base_p, out_p = Path(base), Path(out)
    if method not in METHODS:
        raise CptError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    chosen = detect_method(base_p) if method == "auto" else method
    candidates = read_candidates(add)
    if not candidates:
        raise DataError("no pieces to add (the token source is empty)", path=str(add))
    texts = read_eval_texts(eval_text) if eval_text is not None else None
    report: dict[str, Any] = {"method": chosen, "base": str(base_p), "source": str(add)}
    if chosen == "sentencepiece":
        sp_file = sentencepiece_file(base_p)
        specials = _folder_specials(base_p) if base_p.is_dir() else set()
        model_bytes, res = merge_into_sentencepiece(sp_file, candidates, specials, target_vocab)
        prepare_out_dir(out_p, overwrite)
        fast = write_sentencepiece_folder(model_bytes, base_p, out_p)
        intermediate: list[str] = []
        if texts is not None:
            before, after = _sp_encoder(sp_file.read_bytes()), _sp_encoder(model_bytes)
            lines = [line for t in texts for line in t.split("\n")]
            fast_ids = hf_encoder(fast)(lines)
            report["eval_lines"] = len(lines)
            report["fast_vs_sentencepiece_disagreements"] = sum(a != b for a, b in zip(after(lines), fast_ids))
    else:
        from transformers import AutoTokenizer

        if not base_p.is_dir():
            raise CptError(f"byte-level BPE expansion needs a tokenizer folder, got {base_p}")
        data, res = expand_byte_level_bpe(base_p, candidates, target_vocab)
        prepare_out_dir(out_p, overwrite)
        new_tok = write_fast_folder(data, base_p, out_p)
        intermediate = res.intermediate
        report["unreachable"] = res.unreachable
        report["merges_added"] = res.merges_added
        if texts is not None:
            before, after = hf_encoder(AutoTokenizer.from_pretrained(base_p)), hf_encoder(new_tok)
    report.update(
        vocab_before=res.vocab_before,
        vocab_after=res.vocab_after,
        added=len(res.added),
        intermediate=len(intermediate),
        skipped=res.skipped,
        first_added=res.added[:20],
    )
    if texts is not None:
        report["eval"] = {"file": str(eval_text), "before": compression(before, texts), "after": compression(after, texts)}
    write_report(report, out_p / REPORT_NAME)
    return report
