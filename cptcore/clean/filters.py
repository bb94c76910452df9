"""The filter chain of one ``cpt clean`` run: specs resolved from the registry, options
validated, filter objects built, and the worker function that runs the document-stage
filters and computes the dedup signatures of a shard."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..config import options_to_dict, parse_options
from ..errors import ConfigError

#: Filters run when ``--filter`` is not given (``language`` and ``decontaminate`` join
#: when ``--language`` / ``--decontaminate`` are given).
DEFAULT_FILTERS = ("quality", "repetition", "exact", "near")


@dataclass(frozen=True)
class FilterContext:
    """What a filter's ``make`` may need besides its options."""

    seed: int = 0  # seeds MinHash permutations (same seed, same output)
    scratch: str | None = None  # folder for on-disk dedup indexes (cpt clean: OUT/state); None: a temporary one
    index_cache_mb: int = 16  # page cache of each on-disk dedup index (MiB)


@dataclass(frozen=True)
class Chain:
    """The built filters, in the order they run: document stage, then dedup stage."""

    names: tuple[str, ...]
    doc: tuple[tuple[str, Any], ...]  # (name, filter with check(text))
    dedup: tuple[tuple[str, Any], ...]  # (name, filter with signature/check/add)
    options: dict  # name -> options as a plain dict (stats.json, card.md)


def build_chain(pm: Any, names: Sequence[str], options: dict[str, dict], context: FilterContext) -> Chain:
    """Resolve ``names`` in the ``filters`` registry and build each filter.

    Raises:
        ConfigError: unknown filter (did-you-mean), a filter named twice, options for a
            filter that is not run, bad option, bad stage.
    """
    registry = pm.registry("filters")
    specs = [registry.get(n) for n in names]
    seen = [s.name for s in specs]
    dup = sorted({n for n in seen if seen.count(n) > 1})
    if dup:
        raise ConfigError(f"--filter {dup[0]} given twice")
    for name in options:
        if registry.get(name).name not in seen:
            raise ConfigError(f"--set {name}.KEY=VALUE: filter '{name}' is not run (add --filter {name})")
    doc, dedup, opts = [], [], {}
    by_name = {registry.get(k).name: v for k, v in options.items()}
    for spec in specs:
        o = parse_options(spec.options, by_name.get(spec.name, {}), owner=f"filter '{spec.name}'", section=spec.name)
        if o is None and spec.options is not None:
            o = spec.options()
        opts[spec.name] = options_to_dict(o) if o is not None else {}
        f = spec.make(o, context)
        if spec.stage == "document":
            doc.append((spec.name, f))
        elif spec.stage == "dedup":
            dedup.append((spec.name, f))
        else:
            raise ConfigError(f"filter '{spec.name}': stage must be 'document' or 'dedup', got {spec.stage!r}")
    return Chain(tuple(n for n, _ in doc + dedup), tuple(doc), tuple(dedup), opts)


@dataclass
class ShardWork:
    """A worker's answer for one shard: per document, ``(filter name, detail)`` when a
    document-stage filter removed it, else ``None``; and for the survivors (in order)
    one signature array per dedup filter, stacked (``[survivors, *shape]``)."""

    removed: list
    signatures: dict


def clean_shard(doc_filters: tuple, dedup_filters: tuple, texts: list) -> ShardWork:
    """Run the document-stage filters on ``texts`` (``None`` for unreadable records,
    left alone) and the dedup signatures of those that pass. Pure: the same texts give
    the same answer in any process."""
    removed: list = []
    survivors: list[str] = []
    for text in texts:
        verdict = None
        if text is not None:
            for name, f in doc_filters:
                detail = f.check(text)
                if detail is not None:
                    verdict = (name, detail)
                    break
            if verdict is None:
                survivors.append(text)
        removed.append(verdict)
    sigs = {}
    for name, f in dedup_filters:
        rows = [f.signature(t) for t in survivors]
        sigs[name] = np.stack(rows) if rows else None
    return ShardWork(removed, sigs)
