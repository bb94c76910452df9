"""Compression figures and the expansion report (JSON file + rich table).

``tokens_per_char`` = tokens / characters over the evaluation documents, each encoded
whole without special tokens. ``tokens_per_cjk_char`` = tokens / characters over the
maximal runs of CJK ideographs (U+3400–U+4DBF, U+4E00–U+9FFF, U+F900–U+FAFF), each run
encoded on its own; ``None`` when the text has no CJK character.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import DataError
from ..data import readers

CJK_RUN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")

Encoder = Callable[[list[str]], list[list[int]]]


def read_eval_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """Documents of ``path``: the ``text_field`` of each record of a JSONL/JSON/Parquet
    file (read by :mod:`cptcore.data.readers`; empty ones left out), or
    the whole file as one document (any other suffix).

    Every caller measures the text (tokens/char, KL, bpb), so a file without any
    non-blank document is an error, not an empty list (it gave divisions by zero and a
    safety check that measured nothing and said "safe").

    Raises:
        DataError: missing file, not UTF-8, a bad JSONL line (``path:line``), or no
            text in the file.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError("evaluation text not found", path=str(p))
    if readers.file_format(str(p)) == "text" and not p.name.endswith(".gz"):
        try:
            texts = [p.read_bytes().removeprefix(b"\xef\xbb\xbf").decode("utf-8")]
        except UnicodeDecodeError as exc:
            line = p.read_bytes()[: exc.start].count(b"\n") + 1
            raise DataError("not UTF-8 text", path=str(p), line=line) from None
        return _require_text(texts, p)
    texts = []  # JSONL/JSON/Parquet (.gz too): the same reader and messages as cpt prepare
    for rec in readers.iter_file(str(p), text_field):
        if rec.error in ("empty document", "empty file"):
            continue
        if rec.error:
            raise DataError(rec.error, path=rec.path, line=rec.line)
        texts.append(rec.text if rec.text is not None else (rec.source or "") + (rec.target or ""))
    return _require_text(texts, p)


def _require_text(texts: list[str], path: Path) -> list[str]:
    if not any(t.strip() for t in texts):
        raise DataError("no text in this file (every document is empty or blank)", path=str(path))
    return texts


def compression(encode: Encoder, texts: Iterable[str]) -> dict[str, Any]:
    """Tokens per character of ``texts`` under ``encode`` (batch of str -> batch of ids)."""
    texts = list(texts)
    chars = sum(len(t) for t in texts)
    tokens = sum(len(ids) for ids in encode(texts)) if texts else 0
    runs = [run for t in texts for run in CJK_RUN.findall(t)]
    cjk_chars = sum(len(r) for r in runs)
    cjk_tokens = sum(len(ids) for ids in encode(runs)) if runs else 0
    return {
        "chars": chars,
        "tokens": tokens,
        "tokens_per_char": round(tokens / chars, 4) if chars else None,
        "cjk_chars": cjk_chars,
        "tokens_per_cjk_char": round(cjk_tokens / cjk_chars, 4) if cjk_chars else None,
    }


def hf_encoder(tokenizer) -> Encoder:
    """Encoder for a Hugging Face tokenizer (no special tokens)."""

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []

    return encode


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return p


def print_report(report: dict[str, Any]) -> None:
    """Print the expansion report as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cpt tokenizer expand ({report['method']})", show_header=True)
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("vocabulary before", str(report["vocab_before"]))
    table.add_row("vocabulary after", str(report["vocab_after"]))
    table.add_row("pieces added", str(report["added"]))
    if report.get("intermediate"):
        table.add_row("intermediate tokens", str(report["intermediate"]))
    for reason, count in report["skipped"].items():
        table.add_row(f"skipped: {reason}", str(count))
    if "fast_vs_sentencepiece_disagreements" in report:
        table.add_row(
            "fast tokenizer ≠ sentencepiece (eval lines)",
            f"{report['fast_vs_sentencepiece_disagreements']} / {report['eval_lines']}",
        )
    ev = report.get("eval")
    if ev:
        for key in ("tokens_per_char", "tokens_per_cjk_char"):
            if ev["before"].get(key) is not None:
                table.add_row(f"{key} (before → after)", f"{ev['before'][key]} → {ev['after'][key]}")
    Console().print(table)
