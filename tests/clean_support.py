"""A planted corpus for the ``cpt clean`` tests, built from the bundled real text:
Chinese law (cptcore/assets), English Python docs (tests/data), and the held-out laws
as the evaluation set. Every record has an ``id`` naming what it is."""

from __future__ import annotations

import json
import random
from pathlib import Path

from cptcore.assets import bundled

DATA = Path(__file__).resolve().parent / "data"
N_PLANTED = 15  # of each kind


def law_chunks(name: str = "zh_law_train.jsonl", size: int = 800) -> list[str]:
    """The laws cut into documents of whole lines, about ``size`` characters each."""
    chunks = []
    for line in bundled(name).read_text(encoding="utf-8").splitlines():
        cur = ""
        for ln in json.loads(line)["text"].split("\n"):
            cur += ln + "\n"
            if len(cur) >= size:
                chunks.append(cur)
                cur = ""
        if len(cur) > 200:
            chunks.append(cur)
    return chunks


def english_lines() -> list[str]:
    out = []
    for line in (DATA / "en_python_docs_sample.jsonl").read_text(encoding="utf-8").splitlines():
        for ln in json.loads(line)["text"].split("\n"):
            ln = ln.strip()
            if len(ln.split()) >= 10 and ln[0].isalpha() and not ln.startswith(".."):
                out.append(ln)
    return out


def eval_lines() -> list[str]:
    out = []
    for line in bundled("zh_law_heldout.jsonl").read_text(encoding="utf-8").splitlines():
        out += [ln for ln in json.loads(line)["text"].split("\n") if len(ln) >= 40]
    return out


def _edit(text: str, rng: random.Random, n: int = 3) -> str:
    chars = list(text)
    for pos in rng.sample(range(len(chars)), n):
        if chars[pos] != "\n":
            chars[pos] = "的"
    return "".join(chars)


def eval_file(path: Path, seed: int = 0, n: int = 200) -> Path:
    """An evaluation set: ``n`` held-out law lines (40+ characters), JSONL ``{"text"}``;
    :func:`planted_corpus` with the same seed copies lines of it."""
    lines = random.Random(seed).sample(eval_lines(), n)
    path.write_text("".join(json.dumps({"text": ln}, ensure_ascii=False) + "\n" for ln in lines), encoding="utf-8")
    return path


def planted_corpus(path: Path, seed: int = 0) -> dict[str, int]:
    """Write the corpus to ``path`` (JSONL ``{"id", "text"}``); returns counts per kind.

    Kinds: ``clean-N`` (law text), ``exact-N`` (a clean document again, whitespace and
    full-width forms changed: equal after normalisation), ``near-N`` (a clean document
    with 3 characters replaced), ``english-N`` (an English line), ``eval-N`` (a law
    document not otherwise in the corpus with a held-out line inserted).
    """
    rng = random.Random(seed)
    chunks = law_chunks()
    rng.shuffle(chunks)
    carriers, clean = chunks[:N_PLANTED], chunks[N_PLANTED:]
    records = [{"id": f"clean-{i}", "text": t} for i, t in enumerate(clean)]
    half = len(records) // 2
    planted = []
    long_ones = [i for i in range(half) if len(clean[i]) >= 600]
    for k, i in enumerate(rng.sample(long_ones, 2 * N_PLANTED)):
        if k < N_PLANTED:
            text = clean[i].replace("\n", " \n\n", 1).replace("，", ",", 2) + "  "
            planted.append({"id": f"exact-{k}", "text": text})
        else:
            planted.append({"id": f"near-{k - N_PLANTED}", "text": _edit(clean[i], rng)})
    for k, ln in enumerate(rng.sample(english_lines(), N_PLANTED)):
        planted.append({"id": f"english-{k}", "text": ln})
    copied = random.Random(seed).sample(eval_lines(), 200)[:N_PLANTED]  # lines of eval_file(seed)
    for k, (carrier, ln) in enumerate(zip(carriers, copied)):
        lines = carrier.split("\n")
        lines.insert(len(lines) // 2, ln)
        planted.append({"id": f"eval-{k}", "text": "\n".join(lines)})
    for rec in planted:
        records.insert(rng.randrange(half + 1, len(records) + 1), rec)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    counts: dict[str, int] = {}
    for r in records:
        kind = r["id"].split("-")[0]
        counts[kind] = counts.get(kind, 0) + 1
    return counts
