"""The forgetting ledger of a run: per named eval set, bits per byte against tokens seen,
the baseline, the final and best values, and whether each retained set stayed within its
budget. Read from ``RUN/logs/metrics.jsonl`` (keys ``eval/NAME/bpb``) and the budgets in
``RUN/config.yaml`` (``eval.budget``); torch-free.

Terms: a **retained** set is one with a budget (``eval.budget.NAME``: the largest bpb
increase over the baseline that is allowed, in bits/byte); the other sets are **domain**
sets (what the run should learn). When no set has a budget, the first set is taken as
the domain set and the others as retained (without budgets). The **baseline** is the
evaluation at step 0 (the model before any update); a run without one uses its first
evaluation and says so. **Gain** on a domain set = baseline bpb - bpb (positive is
learning); **change** on a set = bpb - baseline bpb (positive is forgetting).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

_KEY = re.compile(r"^eval/(.+)/bpb$")


@dataclass(frozen=True)
class SetLedger:
    """One eval set of one run. ``points``: ``(step, tokens_seen, bpb)`` per evaluation.
    ``budget`` in bits/byte (None: a domain set or no budget)."""

    name: str
    points: tuple[tuple[int, int, float], ...]
    baseline: float
    baseline_step: int
    final: float
    best: float
    best_step: int
    budget: float | None
    retained: bool

    @property
    def change(self) -> float:
        """Final minus baseline (bits/byte; negative = better)."""
        return self.final - self.baseline

    @property
    def within_budget(self) -> bool | None:
        """``change <= budget`` for a set with a budget, else None."""
        return None if self.budget is None else self.change <= self.budget + 1e-12


@dataclass(frozen=True)
class Ledger:
    """All sets of one run, the step a ``keep_best`` run would keep, and the run's name."""

    run: str
    sets: tuple[SetLedger, ...]
    on_budget: str = "warn"
    best_step: int | None = None  # best mean domain gain with every retained set within budget
    notes: tuple[str, ...] = field(default_factory=tuple)

    def domain(self) -> list[SetLedger]:
        return [s for s in self.sets if not s.retained]

    def retained(self) -> list[SetLedger]:
        return [s for s in self.sets if s.retained]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for s, raw in zip(self.sets, d["sets"]):
            raw.update(change=s.change, within_budget=s.within_budget)
        return d


def set_names(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of the eval sets logged (``eval/NAME/bpb``), in order of first appearance."""
    names: list[str] = []
    for r in records:
        for k in r:
            m = _KEY.match(k)
            if m and m.group(1) not in names:
                names.append(m.group(1))
    return names


def read_budget(run_dir: str | Path) -> tuple[dict[str, float], str]:
    """``(eval.budget, eval.on_budget)`` from ``RUN/config.yaml`` (({}, "warn") when the
    file or the section is missing)."""
    import yaml

    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        return {}, "warn"
    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return {}, "warn"
    ev = cfg.get("eval") if isinstance(cfg, dict) else None
    if not isinstance(ev, dict):
        return {}, "warn"
    budget = {str(k): float(v) for k, v in (ev.get("budget") or {}).items() if isinstance(v, (int, float))}
    return budget, str(ev.get("on_budget", "warn"))


def build_ledger(records: Sequence[Mapping[str, Any]], budget: Mapping[str, float] | None = None,
                 on_budget: str = "warn", run: str = "") -> Ledger | None:
    """The :class:`Ledger` of a run's metrics records (None when no ``eval/NAME/bpb``
    was logged). ``tokens_seen`` of a record without it is carried from the previous one
    (0 before the first)."""
    budget = dict(budget or {})
    names = set_names(records)
    if not names:
        return None
    retained_names = [n for n in names if n in budget] if budget else names[1:]
    notes = []
    if not budget:
        notes.append(f"no eval.budget: '{names[0]}' taken as the domain set, the others as retained (no budget)")
    seen = 0
    per: dict[str, list[tuple[int, int, float]]] = {n: [] for n in names}
    for r in sorted(records, key=lambda r: r["step"]):
        if isinstance(r.get("tokens_seen"), (int, float)):
            seen = int(r["tokens_seen"])
        tokens = 0 if r["step"] == 0 else seen
        for n in names:
            v = r.get(f"eval/{n}/bpb")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                per[n].append((int(r["step"]), tokens, float(v)))
    sets = []
    for n in names:
        pts = per[n]
        base_step, _, base = pts[0]
        if base_step != 0:
            notes.append(f"'{n}': no step-0 evaluation; its first evaluation (step {base_step}) is the baseline")
        b_step, _, b = min(pts, key=lambda p: (p[2], p[0]))
        sets.append(SetLedger(n, tuple(pts), base, base_step, pts[-1][2], b, b_step, budget.get(n),
                              n in retained_names))
    return Ledger(run, tuple(sets), on_budget, _best_step(sets), tuple(notes))


def _best_step(sets: Sequence[SetLedger]) -> int | None:
    """The evaluation step with the largest mean domain gain at which every retained set
    with a budget is within it (the checkpoint ``keep_best`` keeps); None if none is."""
    domain = [s for s in sets if not s.retained]
    if not domain:
        return None
    value = {s.name: {p[0]: p[2] for p in s.points} for s in sets}
    steps = sorted(set.intersection(*(set(v) for v in value.values())))
    best, best_gain = None, None
    for st in steps:
        ok = all(s.budget is None or value[s.name][st] - s.baseline <= s.budget + 1e-12 for s in sets if s.retained)
        if not ok:
            continue
        gain = sum(s.baseline - value[s.name][st] for s in domain) / len(domain)
        if best_gain is None or gain > best_gain:
            best, best_gain = st, gain
    return best


def ledger_markdown(ledgers: Sequence[Ledger]) -> str:
    """The per-set table(s) of the summary: baseline, final, best, change, within budget
    (one table; a ``run`` column when there are several runs)."""
    many = len(ledgers) > 1
    head = (["run"] if many else []) + ["set", "role", "baseline bpb", "final bpb", "best bpb (step)", "change", "budget", "within budget"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lg in ledgers:
        for s in lg.sets:
            within = {None: "-", True: "yes", False: "**no**"}[s.within_budget]
            cells = ([f"`{lg.run}`"] if many else []) + [
                s.name, "retained" if s.retained else "domain", f"{s.baseline:.4f}", f"{s.final:.4f}",
                f"{s.best:.4f} ({s.best_step})", f"{s.change:+.4f}",
                "-" if s.budget is None else f"{s.budget:.4f}", within]
            lines.append("| " + " | ".join(cells) + " |")
    out = ["## Forgetting ledger (bits per byte, lower is better)", ""] + lines + [""]
    for lg in ledgers:
        pre = f"`{lg.run}`: " if many else ""
        if lg.best_step is not None:
            out.append(f"- {pre}best step with every retained set within budget: {lg.best_step} "
                       f"(what `eval.on_budget: keep_best` keeps; on_budget is `{lg.on_budget}`)")
        for note in lg.notes:
            out.append(f"- {pre}{note}")
    out.append("")
    return "\n".join(out)
