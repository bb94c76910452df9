"""Extend a byte-level BPE tokenizer (LLaMA-3, SmolLM2, GPT-2 family) with new tokens.

Choice: **vocabulary plus merges**, not added tokens. Each new token enters the BPE
model's ``vocab`` with a fresh id, and merges that build it are appended *after* every
existing merge (lowest priority).

Why: BPE applies the lowest-ranked applicable merge first, and the new merges never
involve a token the old merges produce from anything but the new ones' inputs, so on any
text the old merges run to completion first and give exactly the old tokenisation; the
new merges then only join adjacent tokens of that result. Consequences:

* text whose old tokenisation has no adjacent pair joined by a new merge (all English
  text when the new tokens are Chinese) keeps exactly its old ids;
* the new tokens behave like the model's own: pre-tokenisation (digit splitting, the
  GPT-2 split regex), byte-level mapping and decoding stay intact, and the folder
  exports cleanly to ``vocab.json``/``merges.txt`` and to GGUF.

Trade-offs (against ``tokenizer.add_tokens``): a token that crosses a pre-tokenizer
boundary (e.g. contains a digit under SmolLM2's digit split, or a letter and a
punctuation mark) can never be produced and is skipped (reason ``pretokenizer_split``);
a new token longer than two old tokens needs intermediate tokens (its left-to-right
prefixes), which are added too and counted in ``intermediate``; and a new token is only
used where the old tokenisation puts a boundary at its edges. Added tokens have none of
these limits, but they are matched greedily before pre-tokenisation in any context,
ignore the BPE segmentation the model was trained with, are lost by tools that read
only ``vocab``/``merges`` (slow tokenizer, GGUF export), and slow encoding down when
there are thousands of them.

Pieces come in SentencePiece form; ``▁`` becomes a space (``" 中国"`` → ``Ġä¸ŃåĽ½``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CptError
from .expand_sp import filter_candidates
from .sources import SPACE_MARK, Candidate


@dataclass
class BpeResult:
    """Outcome of a BPE expansion. ``added`` are the requested tokens (text form);
    ``intermediate`` the extra prefix tokens their merges needed; ``skipped`` maps
    reason -> count; ``unreachable`` lists added tokens that do not encode to their own
    id on their own (expected empty)."""

    vocab_before: int
    vocab_after: int
    added: list[str] = field(default_factory=list)
    intermediate: list[str] = field(default_factory=list)
    merges_added: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    unreachable: list[str] = field(default_factory=list)


def load_byte_level_bpe(base_dir: str | Path) -> dict:
    """The ``tokenizer.json`` of ``base_dir`` as a dict, checked to be byte-level BPE.

    Raises:
        CptError: no ``tokenizer.json``, its model is not BPE, or it has no ByteLevel
            pre-tokenizer (a SentencePiece-style BPE: use the proto merge instead).
    """
    path = Path(base_dir) / "tokenizer.json"
    if not path.is_file():
        raise CptError(f"base tokenizer {base_dir} has no tokenizer.json (byte-level BPE expansion needs one)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("model", {}).get("type") != "BPE" or '"ByteLevel"' not in json.dumps(data.get("pre_tokenizer")):
        raise CptError(f"base tokenizer {base_dir} is not a byte-level BPE tokenizer")
    return data


def _apply_merges(tokens: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Standard BPE loop restricted to ``ranks`` (lowest rank first)."""
    tokens = list(tokens)
    while len(tokens) > 1:
        best, at = None, -1
        for i in range(len(tokens) - 1):
            r = ranks.get((tokens[i], tokens[i + 1]))
            if r is not None and (best is None or r < best):
                best, at = r, i
        if best is None:
            break
        tokens[at : at + 2] = [tokens[at] + tokens[at + 1]]
    return tokens


def expand_byte_level_bpe(
    base_dir: str | Path, candidates: list[Candidate], target_vocab: int | None = None
) -> tuple[dict, BpeResult]:
    """Add ``candidates`` to the byte-level BPE tokenizer of ``base_dir`` (vocab + merges).

    New ids start after the largest existing id (added tokens included); original ids,
    merges and added tokens are unchanged. Candidates are processed shortest first (so
    single characters exist before the words built from them), source order otherwise.
    ``target_vocab`` caps the final vocabulary size (intermediates count).

    Returns:
        (new ``tokenizer.json`` dict, :class:`BpeResult`).

    Raises:
        CptError: not byte-level BPE (:func:`load_byte_level_bpe`), or ``target_vocab``
            smaller than the base vocabulary.
    """
    from tokenizers import Tokenizer

    data = load_byte_level_bpe(base_dir)
    backend = Tokenizer.from_str(json.dumps(data))
    model = data["model"]
    vocab: dict[str, int] = model["vocab"]
    added_tokens = data.get("added_tokens") or []
    ids = list(vocab.values()) + [t["id"] for t in added_tokens]
    next_id = max(ids) + 1
    before = backend.get_vocab_size(with_added_tokens=True)
    if target_vocab is not None and target_vocab < before:
        raise CptError(f"target vocabulary {target_vocab} is smaller than the base vocabulary {before}")
    special = {t["content"] for t in added_tokens}
    special_text = {s.replace(" ", SPACE_MARK) for s in special}

    keep, skipped = filter_candidates(candidates, present=set(), special=special_text, limit=None)
    skipped["pretokenizer_split"] = 0
    keep.sort(key=len)
    old_merges = model["merges"]
    as_strings = bool(old_merges) and isinstance(old_merges[0], str)
    ranks: dict[tuple[str, str], int] = {}
    new_merges: list[tuple[str, str]] = []
    result = BpeResult(vocab_before=before, vocab_after=before)
    intermediate: set[str] = set()
    byte_forms: dict[str, str] = {}
    for piece in keep:
        text = piece.replace(SPACE_MARK, " ")
        pre = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer else [(text, None)]
        if len(pre) != 1:
            skipped["pretokenizer_split"] += 1
            continue
        form = pre[0][0]
        if form in vocab:
            if form in intermediate:  # requested now: count it as added, not intermediate
                intermediate.discard(form)
                result.added.append(piece)
                byte_forms[piece] = form
            else:
                skipped["present"] += 1
            continue
        seq = _apply_merges([t.value for t in backend.model.tokenize(form)], ranks)
        new_tokens = [seq[0] + "".join(seq[1 : k + 1]) for k in range(1, len(seq))]
        missing = [t for t in new_tokens if t not in vocab]
        if target_vocab is not None and next_id + len(missing) > target_vocab:
            skipped["over_target"] += 1
            continue
        cur = seq[0]
        for nxt in seq[1:]:
            merged = cur + nxt
            if (cur, nxt) not in ranks:
                ranks[(cur, nxt)] = len(ranks)
                new_merges.append((cur, nxt))
            if merged not in vocab:
                vocab[merged] = next_id
                next_id += 1
                if merged != form:
                    intermediate.add(merged)
            cur = merged
        result.added.append(piece)
        byte_forms[piece] = form
    model["merges"] = old_merges + [f"{a} {b}" if as_strings else [a, b] for a, b in new_merges]
    result.merges_added = len(new_merges)
    result.intermediate = sorted(intermediate, key=lambda t: vocab[t])
    result.skipped = skipped
    new_backend = Tokenizer.from_str(json.dumps(data))
    result.vocab_after = new_backend.get_vocab_size(with_added_tokens=True)
    for piece in result.added:
        text = piece.replace(SPACE_MARK, " ")
        if new_backend.encode(text, add_special_tokens=False).ids != [vocab[byte_forms[piece]]]:
            result.unreachable.append(piece)
    return data, result
