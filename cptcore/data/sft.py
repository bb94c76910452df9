"""SFT conversations: the four input formats, rendering, masks from offsets, cutting.

Accepted rows (JSONL/JSON/Parquet objects):

* ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
* the seed's ``{"messages": [{"from": "human"|"assistant", "content": str}, ...]}``
* ShareGPT ``{"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...]}``
* Alpaca ``{"instruction": str, "input": str (optional), "output": str}``

(an optional top-level ``"system"`` string becomes the system turn).
"""

from __future__ import annotations

import bisect
import weakref
from typing import Any, Sequence

from ..errors import ConfigError, PluginError
from .tokenize import IGNORE, encode_with_spans

ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}


class SkipSample(Exception):
    """A conversation that cannot be used; ``str(exc)`` is the reason counted."""


#: Reasons that are not bad input: always skipped and counted, whatever ``--on-error``.
POLICY_SKIPS = frozenset({
    "no assistant turn", "longer than max_length", "no assistant tokens",
    "source longer than max_length", "no target tokens",  # {source, target} rows (packing.masked_reason)
})


_tokens_checked: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()


def check_template_tokens(template: Any, tokenizer: Any) -> None:
    """Check that ``tokenizer`` has every special token ``template`` (a
    :class:`~cptcore.specs.ChatTemplate`, built-in or from a plugin) declares in
    ``special_tokens``: each must encode, alone and without added special tokens, to
    exactly one id. Checked once per tokenizer object and token set; nothing to check
    without a tokenizer (``cpt templates --show``).

    Raises:
        ConfigError: a declared token is not one token of this tokenizer, naming the
            template, the token(s) and the pieces each would be split into.
        PluginError: ``special_tokens`` is not a tuple/list of non-empty strings.
    """
    tokens = getattr(template, "special_tokens", ()) or ()
    if tokenizer is None or not tokens:
        return
    name = getattr(template, "name", "?")
    if isinstance(tokens, str) or not all(isinstance(t, str) and t for t in tokens):
        raise PluginError(f"chat template '{name}': special_tokens must be a tuple of non-empty strings, got {tokens!r}")
    key = tuple(tokens)
    done = _tokens_checked.setdefault(tokenizer, set())
    if key in done:
        return
    missing = []
    for t in key:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = ", ".join(repr(p) for p in tokenizer.convert_ids_to_tokens(ids))
            missing.append(f"{t} (it would be split into {pieces})")
    if missing:
        raise ConfigError(
            f"chat template '{name}' needs the special token(s) {'; '.join(missing)}, which tokenizer "
            f"{getattr(tokenizer, 'name_or_path', '')} lacks: pick another --template (or add the token to the tokenizer)"
        )
    done.add(key)


def normalise(obj: Any) -> list[dict[str, str]]:
    """``[{"role", "content"}]`` from any accepted row format.

    Raises:
        SkipSample: unknown format, unknown role, non-string content or system, a
            ``messages``/``conversations`` field that is not a list, no messages.
    """
    if not isinstance(obj, dict):
        raise SkipSample("not a JSON object")
    key = "messages" if "messages" in obj else "conversations"
    raw = obj.get(key)
    msgs: list[dict[str, str]] = []
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        raise SkipSample("field 'system' is not a string")
    if system:
        msgs.append({"role": "system", "content": system})
    if raw is None:
        if "instruction" in obj and "output" in obj:
            ins, inp, out = obj["instruction"], obj.get("input") or "", obj["output"]
            if not all(isinstance(x, str) for x in (ins, inp, out)):
                raise SkipSample("alpaca field is not a string")
            user = f"{ins}\n\n{inp}" if inp.strip() else ins
            return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": out}]
        raise SkipSample("no conversation (need messages, conversations or instruction/output)")
    if not isinstance(raw, list):
        raise SkipSample(f"field '{key}' is not a list")
    if not raw:
        raise SkipSample("empty conversation")
    for i, m in enumerate(raw, 1):
        if not isinstance(m, dict):
            raise SkipSample(f"message {i} is not an object")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if not isinstance(role, str) or role.lower() not in ROLES:
            raise SkipSample(f"unknown role {role!r}")
        if not isinstance(content, str):
            raise SkipSample("message content is not a string")
        msgs.append({"role": ROLES[role.lower()], "content": content})
    if msgs and msgs[0]["role"] == "system" and len(msgs) > 1 and msgs[1]["role"] == "system":
        msgs = [msgs[0], *msgs[2:]]  # top-level system + system message: keep the top-level one
    return msgs


def segments_to_text(segments: Sequence[Any]) -> tuple[str, list[tuple[int, int]]]:
    """The full text and the ``[start, end)`` character spans of trained segments."""
    parts, spans, pos = [], [], 0
    for seg in segments:
        if seg.train and seg.text:
            spans.append((pos, pos + len(seg.text)))
        parts.append(seg.text)
        pos += len(seg.text)
    return "".join(parts), spans


def encode_conversation(
    tokenizer: Any, template: Any, options: Any, messages: Sequence[dict], max_length: int
) -> tuple[list[int], list[int]]:
    """:func:`encode_conversation_counted` without the count of cut tokens."""
    ids, labels, _cut = encode_conversation_counted(tokenizer, template, options, messages, max_length)
    return ids, labels


def encode_conversation_counted(
    tokenizer: Any, template: Any, options: Any, messages: Sequence[dict], max_length: int
) -> tuple[list[int], list[int], int]:
    """Render and tokenize one conversation; labels from character offsets.

    When longer than ``max_length`` tokens, keep the longest prefix of whole turns that
    ends with an assistant turn and fits. Returns ``(input_ids, labels, cut)`` with
    ``cut`` the tokens of the turns left out (counted as ``tokens.truncated``).

    Raises:
        SkipSample: ``"no assistant turn"``, ``"longer than max_length"`` (not even the
            first assistant turn fits), ``"no assistant tokens"`` (all labels masked).
        ConfigError: the tokenizer lacks a special token the template declares
            (:func:`check_template_tokens`).
    """
    check_template_tokens(template, tokenizer)
    if not any(m["role"] == "assistant" for m in messages):
        raise SkipSample("no assistant turn")
    segs = template.render(messages, tokenizer=tokenizer, options=options)
    text, spans = segments_to_text(segs)
    ids, labels, offsets = encode_with_spans(tokenizer, text, spans)
    full = len(ids)
    if len(ids) > max_length:
        starts = [o[0] for o in offsets]
        best = 0
        for k in range(1, len(messages) + 1):
            if messages[k - 1]["role"] != "assistant":
                continue
            prefix, _ = segments_to_text(template.render(messages[:k], tokenizer=tokenizer, options=options))
            if not text.startswith(prefix):
                continue  # not a clean turn boundary for this template
            n_tok = bisect.bisect_left(starts, len(prefix))
            if n_tok <= max_length:
                best = n_tok
        if best == 0:
            raise SkipSample("longer than max_length")
        ids, labels = ids[:best], labels[:best]
    if all(x == IGNORE for x in labels):
        raise SkipSample("no assistant tokens")
    return ids, labels, full - len(ids)
