"""Plugin files of a run (``cpt --plugin FILE``): recorded in ``OUT/config.yaml`` (and
every checkpoint's) as ``plugins.files: [{path, sha256}]``. The run config the user
gives (``--config``) loads its recorded files; on resume, the files recorded by the
checkpoint (or ``OUT/config.yaml``) are checked, never imported: a plugin file is code,
and a checkpoint is something people share, so only the command line (``--plugin``) or
the user's own ``--config`` may load one (docs/security.md). A recorded file that is
missing, changed, or not given again is refused by name (a changed logger, template or
strategy would make the resumed run a different run)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PluginError
from .plugins import file_sha256
from .config import PluginsConfig
from .train.checkpoint import resolve_resume
from .train.integrity import check_tree

if TYPE_CHECKING:
    from .config import RunConfig
    from .plugins import CptPluginManager


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


def load_recorded(pm: CptPluginManager, files: list[dict[str, str]], where: str) -> None:
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


def require_loaded(pm: CptPluginManager, files: list[dict[str, str]], where: str) -> None:
    """Check that each file ``where`` (a checkpoint's or ``OUT``'s ``config.yaml``)
    records is already loaded in ``pm`` (by ``--plugin`` or the user's ``--config``) with
    the recorded sha256. Imports and reads nothing: the paths come from a file.

    Raises:
        PluginError: ``WHERE: ...`` a malformed entry, a file not given on the command
            line, or one whose imported bytes differ from the recorded sha256.
    """
    loaded = dict(pm.plugin_files)  # absolute path -> sha256 of the bytes imported
    for entry in files:
        path, digest = entry.get("path"), entry.get("sha256")
        if not path or not digest or not isinstance(path, str) or not isinstance(digest, str):
            raise PluginError(f"{where}: plugins.files entry {entry!r} needs 'path' and 'sha256'")
        now = loaded.get(str(Path(path).resolve()))
        if now is None:
            raise PluginError(f"{where}: this run used plugin file {path} (sha256 {digest[:12]}...), which cpt train "
                              f"does not load from a checkpoint (a plugin is code): pass it again, "
                              f"cpt --plugin {path} train ...")
        if now != digest:
            raise PluginError(f"{where}: plugin file {path} changed since the run recorded it (sha256 {digest[:12]}... "
                              f"now {now[:12]}...): restore it, or start a new run with another --out")


def with_plugin_files(config: RunConfig, pm: CptPluginManager) -> RunConfig:
    """Load the plugin files ``config`` records (``plugins.files``, e.g. from
    ``--config OUT/config.yaml``) and, when the run resumes, check those of the
    checkpoint it resumes from (:func:`require_loaded`: never imported from there);
    return ``config`` recording every plugin file ``pm`` holds.

    Raises:
        PluginError: a recorded file is missing or changed (see :func:`load_recorded`),
            or one the checkpoint records was not given with ``--plugin``.
    """
    load_recorded(pm, list(config.plugins.files), "plugins.files")
    resume = resolve_resume(config.checkpointing.resume, config.training.out_dir)
    if resume is not None:
        if Path(resume).is_dir():  # no symlink out of the checkpoint before reading its config.yaml

            check_tree(resume)
        for source in (Path(resume) / "config.yaml", Path(config.training.out_dir) / "config.yaml"):
            if source.is_file():
                require_loaded(pm, recorded_files(source), str(source))
                break
    files = [{"path": path, "sha256": digest} for path, digest in pm.plugin_files]
    return dataclasses.replace(config, plugins=PluginsConfig(files=files))
