"""Multiple-choice evaluation from local JSONL (``cpt eval --mc NAME=FILE``).

Accepted items, one JSON object per line:

* ``{"question": str, "choices": [str, ...], "answer": "B" | 1 | "<choice text>",
  "subject": str (optional)}``;
* the A/B/C/D-in-the-question form: no ``choices``, the question ends with lines
  ``A. ...`` / ``B. ...`` (also ``A)``, ``A:``, ``A、``, ``A．``), ``answer`` a letter;
* the C-Eval/CMMLU form: keys ``A``, ``B``, ``C``, ``D`` beside ``question``/``answer``.

Prompt (the MMLU format of Hendrycks et al. 2021, which ColossalEval and
lm-evaluation-harness use for MMLU)::

    The following are multiple choice questions (with answers) about {subject}.

    {k-shot examples, each ending in "Answer: X" and a blank line}
    {question}
    A. {choice}
    ...
    Answer:

Two scores per item (both reported):

* ``letter`` (ColossalEval's first-token protocol, used by Colossal-LLaMA's README
  tables): the logits at the last prompt position for the first token of each answer
  letter (``" A"``, ``" B"``, ...); the largest wins.
* ``loglik``: the summed log-likelihood of each choice's text (``" " + choice``) as a
  continuation of the prompt; the largest wins (``loglik_norm``: divided by the choice's
  UTF-8 bytes, lm-evaluation-harness' ``acc_norm``).

k-shot examples come from a dev file: for each item the first ``k`` dev items of the same
subject (of any subject when the dev file has none of it), never the item itself.
Accuracy is reported overall (micro average) and per subject.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError

LETTERS = "ABCDEFGHIJ"
_INLINE = re.compile(r"^\s*([A-J])\s*[.)．、:：]\s*(.*\S)\s*$")
METHODS = ("letter", "loglik", "loglik_norm")


@dataclass(frozen=True)
class Item:
    """One question: ``choices`` in order, ``answer`` the index of the right one."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""


@dataclass
class McResult:
    """Accuracy of one model on one multiple-choice set, per method (``letter``,
    ``loglik``, ``loglik_norm``): overall and per subject (fractions in [0, 1])."""

    items: int
    accuracy: dict[str, float]
    by_subject: dict[str, dict[str, float]]
    predictions: dict[str, list[int]] = field(default_factory=dict)
    k_shot: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _answer_index(raw: Any, choices: Sequence[str], where: str) -> int:
    if isinstance(raw, bool):
        raise DataError(f"answer {raw!r} is not a letter, an index or a choice", path=where)
    if isinstance(raw, int):
        if 0 <= raw < len(choices):
            return raw
        raise DataError(f"answer index {raw} outside the {len(choices)} choices", path=where)
    if isinstance(raw, str):
        s = raw.strip()
        if len(s) == 1 and s.upper() in LETTERS[: len(choices)]:
            return LETTERS.index(s.upper())
        if s in choices:
            return list(choices).index(s)
    raise DataError(f"answer {raw!r} is not a letter, an index or one of the choices", path=where)


def parse_item(obj: Any, where: str) -> Item:
    """An :class:`Item` from one JSON object (the three forms of the module docstring).

    Raises:
        DataError: not an object, no question, fewer than 2 choices, bad answer.
    """
    if not isinstance(obj, dict):
        raise DataError("not a JSON object", path=where)
    q = obj.get("question")
    if not isinstance(q, str) or not q.strip():
        raise DataError("no 'question' string", path=where)
    choices = obj.get("choices")
    if choices is None and all(isinstance(obj.get(L), str) for L in "AB"):
        choices = [obj[L] for L in LETTERS if isinstance(obj.get(L), str)]
    if choices is None:  # A/B/C/D inside the question
        lines = q.rstrip().split("\n")
        found: list[tuple[str, str]] = []
        while lines:
            m = _INLINE.match(lines[-1])
            if not m:
                break
            found.insert(0, (m.group(1), m.group(2)))
            lines.pop()
        if len(found) < 2 or [L for L, _ in found] != list(LETTERS[: len(found)]):
            raise DataError("no 'choices' and no A./B./... lines at the end of the question", path=where)
        q, choices = "\n".join(lines).rstrip(), [c for _, c in found]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataError("'choices' must be a list of at least 2 strings", path=where)
    if len(choices) > len(LETTERS):
        raise DataError(f"at most {len(LETTERS)} choices", path=where)
    subject = obj.get("subject", "")
    if not isinstance(subject, str):
        raise DataError("'subject' is not a string", path=where)
    return Item(q.strip(), tuple(choices), _answer_index(obj.get("answer"), choices, where), subject)


def read_items(path: str | Path) -> list[Item]:
    """Every item of a JSONL file.

    Raises:
        DataError: missing file, bad JSON or bad item (``FILE:LINE``), no items.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError("file not found", path=str(p))
    items = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"malformed JSON ({exc.msg})", path=str(p), line=n) from None
            items.append(parse_item(obj, f"{p}:{n}"))
    if not items:
        raise DataError("no items", path=str(p))
    return items


def format_question(item: Item, with_answer: bool) -> str:
    body = item.question + "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices)) + "\nAnswer:"
    return body + (f" {LETTERS[item.answer]}\n\n" if with_answer else "")


def build_prompt(item: Item, shots: Sequence[Item]) -> str:
    """The prompt for ``item`` after the ``shots`` examples (module docstring)."""
    subject = item.subject or "general knowledge"
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return head + "".join(format_question(s, True) for s in shots) + format_question(item, False)


def pick_shots(item: Item, dev: Sequence[Item], k: int) -> list[Item]:
    """The first ``k`` dev items of ``item``'s subject (any subject if none), never ``item``."""
    if k <= 0:
        return []
    pool = [d for d in dev if d != item]
    same = [d for d in pool if d.subject == item.subject]
    return (same or pool)[:k]


def _continuation_ids(tok: Any, prompt_ids: list[int], prompt: str, cont: str) -> list[int]:
    """Token ids of ``cont`` after ``prompt``: the tail of ``tok(prompt + cont)`` when
    ``prompt_ids`` is its prefix, else ``cont`` tokenized alone."""
    full = tok(prompt + cont, add_special_tokens=False)["input_ids"]
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return full[len(prompt_ids):]
    return tok(cont, add_special_tokens=False)["input_ids"]


def evaluate_mc(model: Any, tokenizer: Any, items: Sequence[Item], dev: Sequence[Item] = (), k_shot: int = 0,
                device: Any = None, loglik: bool = True) -> McResult:
    """Accuracy of ``model`` on ``items`` by the ``letter`` and ``loglik`` scores.

    Args:
        model: a causal LM (``model(input_ids).logits`` ``[1, S, V]``).
        tokenizer: its Hugging Face tokenizer; BOS is put first when the tokenizer adds
            one by itself.
        items, dev: questions and k-shot examples (:func:`read_items`).
        k_shot: examples per prompt.
        loglik: also the ``loglik`` scores (one forward per choice); False: ``letter``
            only (one forward per item).

    Returns:
        :class:`McResult` (``predictions``: chosen index per item and method; the
        methods computed).
    """
    import torch

    from ..data.tokenize import tokenizer_adds

    device = device or next(model.parameters()).device
    bos = [tokenizer.bos_token_id] if tokenizer_adds(tokenizer)[0] else []
    methods = METHODS if loglik else ("letter",)
    preds: dict[str, list[int]] = {m: [] for m in methods}

    def logprobs(ids: list[int]) -> Any:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0].float()
        return torch.log_softmax(logits, dim=-1)

    for item in items:
        prompt = build_prompt(item, pick_shots(item, dev, k_shot))
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ctx = bos + p_ids
        lp = logprobs(ctx)
        letter_ids = [_continuation_ids(tokenizer, p_ids, prompt, f" {LETTERS[i]}")[0] for i in range(len(item.choices))]
        preds["letter"].append(int(torch.argmax(lp[-1, letter_ids])))
        if not loglik:
            continue
        scores, norm = [], []
        for c in item.choices:
            cont = _continuation_ids(tokenizer, p_ids, prompt, " " + c)
            full = logprobs(ctx + cont)
            n = len(ctx)
            s = float(sum(full[n - 1 + j, t] for j, t in enumerate(cont)))
            scores.append(s)
            norm.append(s / max(1, len((" " + c).encode("utf-8"))))
        preds["loglik"].append(max(range(len(scores)), key=scores.__getitem__))
        preds["loglik_norm"].append(max(range(len(norm)), key=norm.__getitem__))
    accuracy = {m: sum(p == it.answer for p, it in zip(preds[m], items)) / len(items) for m in methods}
    groups: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[it.subject or "-"].append(i)
    by_subject = {s: {m: sum(preds[m][i] == items[i].answer for i in idx) / len(idx) for m in methods}
                  for s, idx in sorted(groups.items())}
    return McResult(len(items), accuracy, by_subject, preds, k_shot)
