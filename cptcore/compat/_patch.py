"""The patch record, the loop that applies a list of them once, and the two gap probes
every compat module uses."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable


@dataclass(frozen=True)
class Patch:
    """One upstream gap: where it is, how to detect it, how to fill it."""

    name: str
    upstream: str  # file:line in colossalai 0.5.0
    has_gap: Callable[[], bool]
    fill: Callable[[], None]


def raises(fn: Callable[[], Any], exc: type[BaseException] = RuntimeError) -> bool:
    """True when ``fn()`` raises ``exc`` (the gap); False when it works or fails otherwise."""
    try:
        fn()
    except exc:
        return True
    except Exception:  # a different failure: not the gap we know how to fill
        return False
    return False


def source_has(obj: Any, text: str) -> bool:
    """True when ``obj``'s source contains ``text`` (the upstream code still has the gap)."""
    try:
        return text in inspect.getsource(obj)
    except (OSError, TypeError):
        return False


def apply_patches(patches: Iterable[Patch], examined: set[str]) -> list[str]:
    """Fill each patch whose gap the running ColossalAI has, at most once per process:
    a name in ``examined`` (the caller's module-level set) is skipped, and every patch
    looked at is added to it. Returns the names filled in this call, in order."""
    done = []
    for patch in patches:
        if patch.name in examined:
            continue
        if patch.has_gap():
            patch.fill()
            done.append(patch.name)
        examined.add(patch.name)
    return done
