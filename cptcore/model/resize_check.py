"""The safety check run after every ``cpt model resize`` (``OUT/resize_report.json``).

Measured on CPU in fp32 with the model before and after the resize (one copy in memory:
the base model's next-token log-probabilities are kept, ``[tokens, rows]`` float32):

* ``retained_ids_changed``: documents of the retained sample whose ids under the new
  tokenizer differ from the old tokenizer's (must be 0: new tokens must not change how
  old text is tokenized).
* ``kl``: mean over positions of ``KL(p_base || p_resized)`` in nats, next-token
  distributions on the retained sample's old-tokenizer ids. Old rows are copied bit for
  bit, so the logits over old ids are unchanged and ``KL = -ln(1 - m)`` exactly, with
  ``m`` the probability mass the resized model puts on new rows (``new_token_mass``,
  also reported, mean over positions); it should be ≈ 0 before training.
* ``bpb``: bits per byte on a domain sample, base model + old tokenizer and resized
  model + new tokenizer: ``Σ NLL (nats) / ln 2 / Σ UTF-8 bytes`` (Gao et al. 2020, "The
  Pile", §4); every token of a document is predicted after one context token (the BOS
  token if the tokenizer adds one, else its EOS token), so all of its bytes count.

A resize is **unsafe** when a retained document's ids changed or ``kl > max_kl``
(default 0.1 nats: new tokens take ~10 % of the probability on text that never uses
them). Unsafe resizes are refused (:class:`cptcore.errors.CptError` naming the number)
unless ``allow_unsafe``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, CptError, DataError
from ..assets import bundled
from ..tokenizer.report import read_eval_texts

REPORT_NAME = "resize_report.json"
DEFAULT_MAX_KL = 0.1


@dataclass(frozen=True)
class CheckOptions:
    """``retain``/``domain``: text files (read like ``--eval-text``; ``retain`` defaults
    to the bundled ``en_retained_sample.jsonl``, ``domain`` to none: bpb not measured).
    ``max_tokens``: tokens measured per sample (per-document windows of at most 256).
    ``domain_docs``, ``domain_chars``: the first documents of ``domain`` and the
    characters of each that are measured (bpb). ``max_kl``: nats.

    Raises:
        ConfigError: ``max_tokens``, ``domain_docs`` or ``domain_chars`` below 1, or
            ``max_kl`` negative or not finite (a check that measures nothing, or can
            never pass, is not a check).
    """

    retain: str | Path | None = None
    domain: str | Path | None = None
    max_tokens: int = 512
    domain_docs: int = 4
    domain_chars: int = 400
    max_kl: float = DEFAULT_MAX_KL
    allow_unsafe: bool = False

    def __post_init__(self):
        for flag, value in (("--check-tokens", self.max_tokens), ("domain_docs", self.domain_docs), ("domain_chars", self.domain_chars)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{flag} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.max_kl) and self.max_kl >= 0):
            raise ConfigError(f"--max-kl must be a finite number >= 0 (nats/token), got {self.max_kl!r}")


def bits_per_byte(nll_nats: float, n_bytes: int) -> float | None:
    """Bits per byte = Σ NLL in nats / ln 2 / Σ UTF-8 bytes (Gao et al. 2020).

    TODO(issue 15): move to the shared ``cptcore.eval`` function once it lands (being
    added in parallel); this local copy is the same formula.
    """
    return nll_nats / math.log(2) / n_bytes if n_bytes else None


def _context_id(tok: Any) -> int:
    ids = tok("a").input_ids
    if tok.bos_token_id is not None and ids and ids[0] == tok.bos_token_id:
        return tok.bos_token_id
    if tok.eos_token_id is not None:
        return tok.eos_token_id
    raise CptError("the tokenizer has neither BOS nor EOS token (needed as context for the check)")


def retained_windows(tok: Any, texts: list[str], max_tokens: int, window: int = 256) -> list[list[int]]:
    """Old-tokenizer ids of ``texts`` as windows ``[context] + ids[:window-1]``, one per
    document, until ``max_tokens`` positions are collected."""
    ctx = _context_id(tok)
    out, total = [], 0
    for text in texts:
        ids = tok(text, add_special_tokens=False).input_ids
        take = min(window - 1, len(ids), max_tokens - total)
        if take <= 0:
            if total >= max_tokens:
                break
            continue
        out.append([ctx] + ids[:take])
        total += take
    return out


def _logprobs(model: Any, ids: list[int]):
    """``[len(ids)-1, rows]`` float32 next-token log-probs predicting ``ids[1:]``."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1)


def domain_nll(model: Any, tok: Any, texts: list[str]) -> tuple[float, int, int]:
    """(Σ NLL nats, Σ bytes, Σ tokens) of ``texts`` (each predicted after the context
    token)."""
    import torch

    ctx = _context_id(tok)
    nll, n_bytes, n_tok = 0.0, 0, 0
    for text in texts:
        ids = [ctx] + tok(text, add_special_tokens=False).input_ids
        lp = _logprobs(model, ids)
        nll -= float(lp.gather(1, torch.tensor(ids[1:])[:, None]).sum())
        n_bytes += len(text.encode("utf-8"))
        n_tok += len(ids) - 1
    return nll, n_bytes, n_tok


def _read(path: str | Path) -> list[str]:
    return read_eval_texts(path)


@dataclass
class Before:
    """What is measured on the base model before resizing."""

    windows: list[list[int]]
    logprobs: list[Any]
    base_rows: int
    retained_texts: list[str]
    domain_texts: list[str]
    domain: dict[str, Any] | None


def measure_before(model: Any, old_tok: Any, options: CheckOptions) -> Before:
    """Base model: log-probs on the retained windows and bpb on the domain sample.

    Raises:
        DataError: unreadable retained or domain file.
    """
    model.eval()
    retain = options.retain if options.retain is not None else bundled("en_retained_sample.jsonl")
    texts = _read(retain)
    windows = retained_windows(old_tok, texts, options.max_tokens)
    if not windows:
        raise DataError("the retained sample gives no tokens to measure", path=str(retain))
    logprobs = [_logprobs(model, w) for w in windows]
    domain_texts, domain = [], None
    if options.domain is not None:
        domain_texts = [t[: options.domain_chars] for t in _read(options.domain)][: options.domain_docs]
        nll, nb, nt = domain_nll(model, old_tok, domain_texts)
        domain = {"file": str(options.domain), "docs": len(domain_texts), "bytes": nb, "base_tokens": nt, "base_bpb": bits_per_byte(nll, nb)}
    rows = model.get_input_embeddings().weight.shape[0]
    return Before(windows, logprobs, rows, texts, domain_texts, domain)


def measure_after(model: Any, old_tok: Any, new_tok: Any, before: Before, options: CheckOptions) -> dict[str, Any]:
    """Compare the resized model with ``before`` and judge (module docstring).

    Returns:
        The report: ``retained`` (file, documents, ids_changed), ``kl``, ``kl_max``,
        ``new_token_mass``, ``positions``, ``domain`` (bpb before/after or ``None``),
        ``max_kl``, ``unsafe`` (list of one-line reasons), ``safe``.
    """
    import torch

    model.eval()
    changed = sum(
        old_tok(t, add_special_tokens=False).input_ids != new_tok(t, add_special_tokens=False).input_ids
        for t in before.retained_texts
    )
    kls, masses = [], []
    n_base = before.base_rows
    for w, lp_base in zip(before.windows, before.logprobs):
        lp = _logprobs(model, w)
        p = lp_base.exp()
        kls.append((p * (lp_base - lp[:, :n_base])).sum(-1))
        masses.append(lp[:, n_base:].exp().sum(-1) if lp.shape[1] > n_base else torch.zeros(lp.shape[0]))
    kl = torch.cat(kls) if kls else torch.zeros(0)
    mass = torch.cat(masses) if masses else torch.zeros(0)
    report: dict[str, Any] = {
        "retained": {
            "file": str(options.retain if options.retain is not None else bundled("en_retained_sample.jsonl")),
            "docs": len(before.retained_texts),
            "ids_changed": int(changed),
        },
        "positions": int(kl.numel()),
        "kl": float(kl.mean().clamp(min=0)) if kl.numel() else None,
        "kl_max": float(kl.max()) if kl.numel() else None,
        "new_token_mass": float(mass.mean()) if mass.numel() else None,
        "domain": None,
        "max_kl": options.max_kl,
    }
    if before.domain is not None:
        nll, nb, nt = domain_nll(model, new_tok, before.domain_texts)
        report["domain"] = dict(before.domain, resized_tokens=nt, resized_bpb=bits_per_byte(nll, nb))
    unsafe = []
    if changed:
        unsafe.append(f"{changed} of {len(before.retained_texts)} retained documents are tokenized differently by the new tokenizer")
    if report["kl"] is not None and not report["kl"] <= options.max_kl:
        unsafe.append(
            f"KL(base || resized) on retained text is {report['kl']:.4g} nats/token (threshold {options.max_kl:g}); "
            f"new tokens take {report['new_token_mass']:.1%} of the probability"
        )
    report["unsafe"] = unsafe
    report["safe"] = not unsafe
    return report


class UnsafeResizeError(CptError):
    """A resize the safety check refused; ``report`` holds its numbers."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


def refuse_if_unsafe(report: dict[str, Any], options: CheckOptions, report_path: Path) -> None:
    """Raise for an unsafe report unless ``options.allow_unsafe``.

    Raises:
        UnsafeResizeError: ``unsafe resize: <first reason> (...; --allow-unsafe saves
            anyway)``.
    """
    if report["unsafe"] and not options.allow_unsafe:
        raise UnsafeResizeError(
            f"unsafe resize: {report['unsafe'][0]} (report: {report_path}; --max-kl sets the threshold, "
            "--allow-unsafe saves the model anyway)",
            report,
        )


def print_check(report: dict[str, Any]) -> None:
    """The check as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="resize safety check")
    table.add_column("")
    table.add_column("value", justify="right")
    r = report["retained"]
    table.add_row("retained docs with changed ids", f"{r['ids_changed']} / {r['docs']}")
    if report["kl"] is not None:
        table.add_row(f"KL(base‖resized), nats/token ({report['positions']} positions)", f"{report['kl']:.3g} (max {report['kl_max']:.3g})")
        table.add_row("probability mass on new tokens", f"{report['new_token_mass']:.3%}")
    d = report["domain"]
    if d:
        table.add_row(f"domain bpb, {d['docs']} docs ({d['bytes']} bytes)", f"{d['base_bpb']:.3f} → {d['resized_bpb']:.3f}")
        table.add_row("domain tokens", f"{d['base_tokens']} → {d['resized_tokens']}")
    else:
        table.add_row("domain bpb", "not measured (--domain FILE)")
    table.add_row("verdict", "safe" if report["safe"] else "[red]UNSAFE[/red]: " + "; ".join(report["unsafe"]))
    Console().print(table)
