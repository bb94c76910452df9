"""``stats.json`` (the per-shard markers merged: every document in = kept + removed by
reason, per input) and ``card.md`` (the data card)."""

from __future__ import annotations

import collections
from typing import Any

from .. import __version__

#: Distinct rules counted per reason (filter); further ones are added up under
#: ``"REASON: other rules"``. A rule is the removal detail without its bracketed part
#: (``"RULE (detail)"``, :class:`cptcore.specs.FilterSpec`); a filter whose rules carry
#: per-document text (a document number, a score) would otherwise grow the counters,
#: the shard markers and stats.json with every document it removes.
RULES_PER_REASON = 64
OTHER_RULES = "other rules"


def count_rule(rules: collections.Counter, reason: str, rule: str, n: int = 1) -> None:
    """Add ``n`` removals under ``"REASON: RULE"`` in ``rules``, or under
    ``"REASON: other rules"`` once ``reason`` has :data:`RULES_PER_REASON` rules."""
    key = f"{reason}: {rule}"
    if key not in rules and rule != OTHER_RULES:
        prefix = reason + ": "
        if sum(1 for k in rules if k.startswith(prefix) and k != prefix + OTHER_RULES) >= RULES_PER_REASON:
            key = prefix + OTHER_RULES
    rules[key] += n


#: A filter removing more than this share of the input is flagged in card.md and the
#: terminal summary (on real domain text a default threshold can remove a third of it:
#: Gopher's repetition rules on statutes and code, docs/clean.md).
HEAVY_SHARE = 0.2


def heavy_filters(stats: dict[str, Any], share: float = HEAVY_SHARE) -> list[tuple[str, int, float]]:
    """``(filter, documents removed, share of the input)`` for each filter of ``stats``
    (stats.json's content) that removed more than ``share`` of the documents in."""
    n_in = stats["documents"]["in"]
    removed = stats["documents"]["removed"]
    return [(name, removed[name], removed[name] / n_in) for name in stats["filters"]
            if n_in and removed.get(name, 0) / n_in > share]


def heavy_warning(name: str, n: int, frac: float) -> str:
    return (f"{name} removed {n:,} documents, {frac:.1%} of the input (over {HEAVY_SHARE:.0%}): check its examples "
            f"in card.md; its thresholds are options (--set {name}.KEY=VALUE, cpt filters)")


class StatsMerger:
    """Adds up shard markers (:meth:`cptcore.clean.pipeline._Run.finish`) per input, in
    shard order, keeping the first ``examples`` removed documents per reason."""

    def __init__(self, specs, examples: int):
        self.specs = specs
        self.examples = examples
        n = len(specs)
        self.docs = [collections.Counter() for _ in range(n)]
        self.removed = [collections.Counter() for _ in range(n)]
        self.rules: collections.Counter = collections.Counter()
        self.bytes = [collections.Counter() for _ in range(n)]
        self.files: list[set] = [set() for _ in range(n)]
        self.shards = [0] * n
        self.ex: dict[str, list] = {}
        self.outputs: list[str] = []

    def add(self, m: dict) -> None:
        i = m["input"]
        self.shards[i] += 1
        self.docs[i]["in"] += m["documents"]["in"]
        self.docs[i]["kept"] += m["documents"]["kept"]
        self.removed[i].update(m["documents"]["removed"])
        for key, n in m["rules"].items():
            reason, rule = key.split(": ", 1)
            count_rule(self.rules, reason, rule, n)
        self.bytes[i].update(m["bytes"])
        self.files[i].update(m["files"])
        for reason, items in m["examples"].items():
            ex = self.ex.setdefault(reason, [])
            ex.extend(items[: self.examples - len(ex)])
        if "shards" in m["outputs"]:
            self.outputs.append(m["outputs"]["shards"])

    def stats(self, args, chain, resumed: int, seconds: float) -> dict[str, Any]:
        inputs = []
        for i, spec in enumerate(self.specs):
            removed = dict(sorted(self.removed[i].items()))
            d = {"in": self.docs[i]["in"], "kept": self.docs[i]["kept"], "removed": removed}
            if d["in"] != d["kept"] + sum(removed.values()):  # pragma: no cover - markers assert it
                raise AssertionError(f"accounting broken for {spec.pattern}")
            inputs.append({
                "input": spec.pattern,
                "files": sorted(self.files[i]),
                "shards": self.shards[i],
                "documents": d,
                "bytes": {"in": self.bytes[i]["in"], "kept": self.bytes[i]["kept"]},
            })
        removed: collections.Counter = collections.Counter()
        for c in self.removed:
            removed.update(c)
        return {
            "inputs": inputs,
            "documents": {
                "in": sum(x["documents"]["in"] for x in inputs),
                "kept": sum(x["documents"]["kept"] for x in inputs),
                "removed": dict(sorted(removed.items())),
            },
            "removed_by_rule": dict(sorted(self.rules.items())),
            "bytes": {"in": sum(x["bytes"]["in"] for x in inputs), "kept": sum(x["bytes"]["kept"] for x in inputs)},
            "filters": list(chain.names),
            "options": chain.options,
            "examples": self.ex,
            "outputs": self.outputs,
            "seed": args.seed,
            "on_error": args.on_error,
            "write_removed": args.write_removed,
            "shard_docs": args.shard_docs,
            "shard_bytes": args.shard_bytes,
            "shards_resumed": resumed,
            "seconds": round(seconds, 3),
            "command": args.command,
            "cptcore_version": __version__,
        }


def _fence(text: str) -> str:
    text = text.replace("```", "`​``")
    return "```text\n" + text.rstrip() + "\n```"


def write_card(path, stats: dict[str, Any], pm: Any) -> None:
    """Write the data card: what went in, what each filter removed (counts, rules, a
    few examples), the options and the command."""
    registry = pm.registry("filters")
    d = stats["documents"]
    total_removed = sum(d["removed"].values())
    lines = [
        "# Data card",
        "",
        f"Made by `cpt clean` (cptcore {stats['cptcore_version']}). Command:",
        "",
        "```bash",
        stats["command"] or "(called from Python)",
        "```",
        "",
        f"**{d['in']:,} documents in = {d['kept']:,} kept + {total_removed:,} removed**; "
        f"{stats['bytes']['in']:,} bytes in, {stats['bytes']['kept']:,} kept. Cleaned shards: "
        f"`shards/` (`cpt prepare pretrain --input OUT/shards ...`); removed documents with their "
        f"reason: {'`removed/`' if stats.get('write_removed', True) else 'not written (--no-write-removed)'}; "
        f"exact counts: `stats.json`.",
        "",
        "## Inputs",
        "",
        "| input | files | in | kept | removed |",
        "|---|---:|---:|---:|---|",
    ]
    for inp in stats["inputs"]:
        r = ", ".join(f"{k}: {v:,}" for k, v in inp["documents"]["removed"].items()) or "0"
        lines.append(f"| `{inp['input']}` | {len(inp['files'])} | {inp['documents']['in']:,} | {inp['documents']['kept']:,} | {r} |")
    lines += ["", "## Filters", "", "Run in this order (document filters, then deduplication); a document is counted under the first filter that removes it.", ""]
    heavy = {name: (n, frac) for name, n, frac in heavy_filters(stats)}
    for name in stats["filters"]:
        spec = registry.get(name)
        n = d["removed"].get(name, 0)
        lines += [f"### `{name}`: {n:,} removed ({n / d['in']:.2%} of the input)" if d["in"] else f"### `{name}`: 0 removed", ""]
        if spec.description:
            lines += [spec.description, ""]
        if name in heavy:
            lines += [f"**Check:** {heavy_warning(name, *heavy[name])}.", ""]
        opts = stats["options"].get(name) or {}
        if opts:
            lines.append("Options: " + ", ".join(f"`{k}={v!r}`" for k, v in opts.items()))
            lines.append("")
        rules = {k.split(": ", 1)[1]: v for k, v in stats["removed_by_rule"].items() if k.split(": ", 1)[0] == name}
        if rules:
            lines += ["| rule | removed |", "|---|---:|"] + [f"| {k} | {v:,} |" for k, v in rules.items()] + [""]
        for ex in stats["examples"].get(name, []):
            lines += [f"- `{ex['source']}`: {ex['detail']}", "", _fence(ex["text"]), ""]
    other = [r for r in d["removed"] if r not in stats["filters"]]
    if other:
        lines += ["## Unreadable records (skipped with --on-error skip)", ""]
        for r in other:
            lines.append(f"- {r}: {d['removed'][r]:,}")
            for ex in stats["examples"].get(r, []):
                lines.append(f"  - `{ex['source']}`: {ex['detail']}")
        lines.append("")
    lines += [
        "## Determinism",
        "",
        f"Seed {stats['seed']}; shards of at most {stats['shard_docs']:,} documents / {stats['shard_bytes']:,} bytes. "
        "The same inputs and options give byte-identical shards, with any executor; a killed run resumes at its first unfinished shard.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
