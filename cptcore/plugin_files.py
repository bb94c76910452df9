"""Plugin files of a run (``cpt --plugin FILE``): recorded in ``OUT/config.yaml`` (and
every checkpoint's) as ``plugins.files: [{path, sha256}]`` and loaded again on resume,
so ``cpt train --resume auto`` needs no ``--plugin`` flag; a recorded file that is
missing or whose bytes changed is refused by name (a changed logger, template or
strategy would make the resumed run a different run)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .errors import PluginError
from .plugins import file_sha256


def recorded_files(config_yaml: Path) -> list[dict[str, str]]:
    """``plugins.files`` of a written ``config.yaml`` ([] when absent or without it)."""
    import yaml

    if not config_yaml.is_file():
        return []
    try:
        doc = yaml.safe_load(config_yaml.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        return []  # a damaged config.yaml is reported by the checkpoint checks, by name
    plugins = doc.get("plugins") if isinstance(doc, dict) else None
    files = (plugins.get("files") if isinstance(plugins, dict) else None) or []
    return [dict(f) for f in files if isinstance(f, dict)]


def load_recorded(pm: Any, files: list[dict[str, str]], where: str) -> None:
    """Check each recorded file against its sha256 and register it in ``pm`` (files the
    command line already loaded are not imported twice, but are checked).

    Raises:
        PluginError: ``WHERE: plugin file PATH ...`` missing, changed, or malformed entry.
    """
    for entry in files:
        path, digest = entry.get("path"), entry.get("sha256")
        if not path or not digest:
            raise PluginError(f"{where}: plugins.files entry {entry!r} needs 'path' and 'sha256'")
        p = Path(path)
        if not p.is_file():
            raise PluginError(f"{where}: plugin file {p} used by this run is missing: restore it (sha256 {digest[:12]}...)")
        now = file_sha256(p)
        if now != digest:
            raise PluginError(f"{where}: plugin file {p} changed since the run recorded it (sha256 {digest[:12]}... "
                              f"now {now[:12]}...): restore it, or start a new run with another --out")
        pm.add_plugin_file(p)


def with_plugin_files(config: Any, pm: Any) -> Any:
    """Load the plugin files ``config`` records (``plugins.files``, e.g. from
    ``--config OUT/config.yaml``) and, when the run resumes, those of the checkpoint it
    resumes from; return ``config`` recording every plugin file ``pm`` holds.

    Raises:
        PluginError: a recorded file is missing or changed (see :func:`load_recorded`).
    """
    from .config import PluginsConfig
    from .train.checkpoint import resolve_resume

    load_recorded(pm, list(config.plugins.files), "plugins.files")
    resume = resolve_resume(config.checkpointing.resume, config.training.out_dir)
    if resume is not None:
        for source in (Path(resume) / "config.yaml", Path(config.training.out_dir) / "config.yaml"):
            if source.is_file():
                load_recorded(pm, recorded_files(source), str(source))
                break
    files = [{"path": path, "sha256": digest} for path, digest in pm.plugin_files]
    return dataclasses.replace(config, plugins=PluginsConfig(files=files))
