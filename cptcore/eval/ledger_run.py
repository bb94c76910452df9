"""The forgetting ledger *during* a run (torch-free): the step-0 baseline, the change of
every eval set against it, budget decisions (``eval.on_budget``) and the best step.

Terms (as :mod:`cptcore.eval.ledger`, the report's reader): a **retained** set has a
budget (``eval.budget.NAME``, the largest allowed bpb increase over the baseline, bits/
byte); a bpb set without one is a **domain** set. The **baseline** is the evaluation of
the model as loaded, before any update (step 0), or one handed in (a later stage of a
multi-stage run gets the first stage's). Each set's tracked value is ``bpb`` (``loss`` in
nats/token for a folder prepared without ``label_bytes``; ``acc`` for a multiple-choice
set, where higher is better). **Gain** of a step = mean over domain sets of
``baseline - bpb``; ``keep_best`` keeps the step with the largest gain > 0 at which every
retained set is within its budget.

:class:`RunLedger` holds all of it and saves as JSON (``trainer_state.json`` entry
``ledger``), so a resumed run keeps the original baseline and its best step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import CptError

EPS = 1e-12


@dataclass(frozen=True)
class Verdict:
    """What :meth:`RunLedger.observe` decided at one evaluation.

    Attributes:
        warnings: one line per retained set over its budget (``warn`` and ``stop``).
        stop: the reason to stop (``on_budget: stop`` and a breach), else None.
        new_best: this step is the new best (``keep_best``): its checkpoint must be saved.
    """

    warnings: tuple[str, ...] = ()
    stop: str | None = None
    new_best: bool = False

    @property
    def save(self) -> bool:
        """A checkpoint is needed at this step (stop or new best)."""
        return self.stop is not None or self.new_best


def metric_of(metrics: Mapping[str, Any], name: str) -> tuple[str, float] | None:
    """``(key, value)`` tracked for set ``name`` in flat eval metrics: ``bpb``, else
    ``acc`` (multiple choice), else ``loss``; None when the set is absent."""
    for key in ("bpb", "acc", "loss"):
        v = metrics.get(f"eval/{name}/{key}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return key, float(v)
    return None


def per_set(metrics: Mapping[str, Any], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{NAME: {key: value}}`` of flat ``eval/NAME/key`` metrics (``*_delta`` left out)."""
    out: dict[str, dict[str, float]] = {}
    for name in names:
        pre = f"eval/{name}/"
        vals = {k[len(pre):]: float(v) for k, v in metrics.items()
                if k.startswith(pre) and "/" not in k[len(pre):] and not k.endswith("_delta")
                and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if vals:
            out[name] = vals
    return out


class RunLedger:
    """Baseline, changes, budgets and best step of one run (see the module docstring).

    Args:
        names: the eval sets in order (bpb sets and multiple-choice sets).
        budget: NAME -> largest allowed bpb increase (validated by
            :func:`cptcore.eval.sets.check_budget`).
        on_budget: ``warn`` | ``stop`` | ``keep_best``.
    """

    def __init__(self, names: Sequence[str], budget: Mapping[str, float] | None = None, on_budget: str = "warn"):
        self.names = tuple(names)
        self.budget = dict(budget or {})
        self.on_budget = on_budget
        self.baseline: dict[str, dict[str, float]] | None = None  # NAME -> {bpb, loss, ...} at baseline_step
        self.baseline_step = 0
        self.last: dict[str, dict[str, float]] = {}
        self.last_step: int | None = None
        self.best_per_set: dict[str, tuple[float, int]] = {}  # NAME -> (best value, its step)
        self.best: dict[str, Any] | None = None  # {"step", "gain"} (keep_best candidate)
        self.stopped: dict[str, Any] | None = None  # {"step", "reason"}
        self.late: dict[str, int] = {}  # NAME -> step its baseline was taken at (a set the baseline lacked)

    # ------------------------------------------------------------------ observing
    def set_baseline(self, metrics: Mapping[str, Any] | Mapping[str, Mapping[str, float]], step: int = 0) -> None:
        """Take ``metrics`` (flat ``eval/NAME/key`` or ``{NAME: {key: value}}``) as the
        baseline, measured at ``step``."""
        nested = all(isinstance(v, Mapping) for v in metrics.values()) and metrics
        self.baseline = {n: dict(v) for n, v in metrics.items()} if nested else per_set(metrics, self.names)
        self.baseline_step = int(step)
        self._track(self.baseline, step)

    @staticmethod
    def _flat(nested: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        return {f"eval/{n}/{k}": v for n, vals in nested.items() for k, v in vals.items()}

    def _track(self, sets: Mapping[str, Mapping[str, float]], step: int) -> None:
        flat = self._flat(sets)
        for name in sets:
            got = metric_of(flat, name)
            if got is None:
                continue
            key, value = got
            self.last[name] = dict(sets[name])
            old = self.best_per_set.get(name)
            better = old is None or (value > old[0] if key == "acc" else value < old[0])
            if better:
                self.best_per_set[name] = (value, int(step))
        self.last_step = int(step)

    def deltas(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """``eval/NAME/{bpb,acc,loss}_delta`` = value - baseline per set ({} without a
        baseline)."""
        if self.baseline is None:
            return {}
        base = self._flat(self.baseline)
        out = {}
        for name in self.names:
            got, ref = metric_of(metrics, name), metric_of(base, name)
            if got is not None and ref is not None and got[0] == ref[0]:
                out[f"eval/{name}/{got[0]}_delta"] = got[1] - ref[1]
        return out

    def observe(self, step: int, metrics: Mapping[str, Any]) -> Verdict:
        """Record the evaluation at ``step`` and apply ``eval.on_budget``. Without a
        baseline (an old checkpoint resumed) this evaluation becomes it."""
        if self.baseline is None:
            self.set_baseline(metrics, step)
            return Verdict()
        notes = self._late_baselines(metrics, step)
        self._track(per_set(metrics, self.names), step)
        base = self._flat(self.baseline)
        warnings, over = [], []
        for name, limit in self.budget.items():
            got, ref = metric_of(metrics, name), metric_of(base, name)
            if got is None or ref is None:
                continue
            change = got[1] - ref[1]
            if change > limit + EPS:
                over.append(name)
                warnings.append(f"eval budget: '{name}' {got[0]} {got[1]:.4f} is {change:+.4f} over its baseline "
                                f"{ref[1]:.4f} (step {self.late.get(name, self.baseline_step)}), beyond its budget {limit:g} at step {step}")
        if self.on_budget == "stop" and over:
            reason = (f"eval budget exceeded at step {step} on {', '.join(repr(n) for n in over)} "
                      f"(eval.on_budget: stop)")
            self.stopped = {"step": int(step), "reason": reason}
            return Verdict(tuple(notes + warnings), stop=reason)
        new_best = False
        if self.on_budget == "keep_best" and not over:
            gain = self.gain(metrics)
            if gain is not None and gain > EPS and (self.best is None or gain > self.best["gain"] + EPS):
                self.best = {"step": int(step), "gain": gain}
                new_best = True
        return Verdict(tuple(notes + (warnings if self.on_budget != "keep_best" else [])), new_best=new_best)

    def _late_baselines(self, metrics: Mapping[str, Any], step: int) -> list[str]:
        """A set the baseline lacks (added on resume or in a later stage) or holds in
        another metric (``loss`` then ``bpb``): this evaluation becomes its baseline
        (recorded in :attr:`late`), one note line each, instead of going unchecked."""
        notes = []
        base = self._flat(self.baseline or {})
        for name, vals in per_set(metrics, self.names).items():
            got, ref = metric_of(metrics, name), metric_of(base, name)
            if got is None or (ref is not None and ref[0] == got[0]):
                continue
            self.baseline[name] = dict(vals)  # type: ignore[index]
            self.late[name] = int(step)
            notes.append(f"eval set '{name}' has no {got[0]} baseline from step {self.baseline_step} (added on "
                         f"resume or in a later stage): its evaluation at step {step} is taken as its baseline")
        return notes

    def domain(self) -> list[str]:
        """bpb sets without a budget."""
        base = self._flat(self.baseline or {})
        return [n for n in self.names if n not in self.budget and (metric_of(base, n) or ("",))[0] in ("bpb", "loss")]

    def gain(self, metrics: Mapping[str, Any]) -> float | None:
        """Mean over domain sets of baseline - value (bits/byte; None without domain sets)."""
        base = self._flat(self.baseline or {})
        vals = []
        for n in self.domain():
            got, ref = metric_of(metrics, n), metric_of(base, n)
            if got is not None and ref is not None:
                vals.append(ref[1] - got[1])
        return sum(vals) / len(vals) if vals else None

    def protected(self) -> tuple[int, ...]:
        """Checkpoint steps that ``checkpointing.keep_last`` must not delete."""
        return (int(self.best["step"]),) if self.best else ()

    # ------------------------------------------------------------------ showing
    def progress_text(self) -> str:
        """``zh 2.1100(-0.0800) en 1.0200(+0.0100)`` of the last evaluation ('' before)."""
        if not self.last or self.baseline is None:
            return ""
        flat, base = self._flat(self.last), self._flat(self.baseline)
        parts = []
        for n in self.names:
            got, ref = metric_of(flat, n), metric_of(base, n)
            if got is not None:
                delta = f"({got[1] - ref[1]:+.3f})" if ref is not None and ref[0] == got[0] else ""
                parts.append(f"{n} {got[1]:.3f}{delta}")
        return " " + " ".join(parts) if parts else ""

    def table(self) -> list[dict[str, Any]]:
        """One row per set: ``set, role, metric, baseline, baseline_step, final, best, best_step,
        change, budget, within_budget`` (None where it does not apply)."""
        rows = []
        base, last = self._flat(self.baseline or {}), self._flat(self.last)
        for n in self.names:
            ref, fin = metric_of(base, n), metric_of(last, n)
            if ref is None or fin is None:
                continue
            budget = self.budget.get(n)
            change = fin[1] - ref[1]
            role = "mc" if ref[0] == "acc" else ("retained" if budget is not None else "domain")
            best = self.best_per_set.get(n, (fin[1], self.last_step))
            rows.append({"set": n, "role": role, "metric": ref[0], "baseline": ref[1],
                         "baseline_step": self.late.get(n, self.baseline_step), "final": fin[1],
                         "best": best[0], "best_step": best[1], "change": change, "budget": budget,
                         "within_budget": None if budget is None else change <= budget + EPS})
        return rows

    def summary(self) -> dict[str, Any]:
        """The ``ledger`` entry of ``summary.json``."""
        return {"baseline_step": self.baseline_step, "late_baselines": dict(self.late), "on_budget": self.on_budget,
                "sets": self.table(),
                "best": self.best, "stopped": self.stopped, "baseline": self.baseline}

    def render(self) -> Any:
        """The per-set table as a ``rich.table.Table``."""
        from rich.table import Table

        t = Table(title="forgetting ledger (bpb: bits/byte, lower is better; acc: higher is better)")
        for col in ("set", "role", "metric", "baseline", "final", "best (step)", "change", "budget", "within"):
            t.add_column(col, justify="left" if col in ("set", "role", "metric") else "right", no_wrap=True)
        for r in self.table():
            within = {None: "-", True: "yes", False: "NO"}[r["within_budget"]]
            t.add_row(r["set"], r["role"], r["metric"], f"{r['baseline']:.4f}", f"{r['final']:.4f}",
                      f"{r['best']:.4f} ({r['best_step']})", f"{r['change']:+.4f}",
                      "-" if r["budget"] is None else f"{r['budget']:g}", within)
        return t

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (``trainer_state.json`` entry ``ledger``)."""
        return {"baseline": self.baseline, "baseline_step": self.baseline_step, "last": self.last,
                "last_step": self.last_step, "best_per_set": {n: list(v) for n, v in self.best_per_set.items()},
                "best": self.best, "stopped": self.stopped, "late": dict(self.late)}

    def load_state_dict(self, state: Any, where: str) -> None:
        """Inverse of :meth:`state_dict` (``stopped`` is not restored: the resumed run
        goes on); ``{}``/None (a checkpoint from before the
        ledger) leaves the ledger without a baseline.

        Raises:
            CptError: a malformed entry (one line naming ``where``).
        """
        if not state:
            return
        try:
            if not isinstance(state, dict):
                raise TypeError("not an object")
            self.baseline = _sets(state.get("baseline")) if state.get("baseline") is not None else None
            self.baseline_step = _int(state.get("baseline_step", 0))
            self.last = _sets(state.get("last") or {})
            self.last_step = None if state.get("last_step") is None else _int(state["last_step"])
            self.best_per_set = {str(n): (_num(v[0]), _int(v[1])) for n, v in (state.get("best_per_set") or {}).items()}
            best = state.get("best")
            self.best = None if best is None else {"step": _int(best["step"]), "gain": _num(best["gain"])}
            self.late = {str(n): _int(v) for n, v in (state.get("late") or {}).items()}
            self.stopped = None  # a resumed run continues past the stop it was saved at
        except (TypeError, KeyError, ValueError, IndexError, AttributeError) as exc:
            raise CptError(f"{where}: corrupt 'ledger' entry ({type(exc).__name__}: {exc})") from None


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"not a finite number: {v!r:.40}")
    return float(v)


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"not a step: {v!r:.40}")
    return v


def _sets(v: Any) -> dict[str, dict[str, float]]:
    if not isinstance(v, dict):
        raise TypeError("sets not an object")
    return {str(n): {str(k): _num(x) for k, x in vals.items()} for n, vals in v.items()}
