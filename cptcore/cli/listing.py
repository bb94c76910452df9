"""``cpt plugins`` and the per-registry listing commands (``cpt strategies``, ...)."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any, Optional

import typer

from ..data.sft import check_template_tokens, segments_to_text
from ..data.tokenize import IGNORE, encode_with_spans, load_tokenizer
from ..errors import CptError
from ..registry import Registry
from ..specs import REGISTRY_KINDS

if TYPE_CHECKING:
    from ..plugins import CptPluginManager
    from ..specs import RegistryKind


def _option_summary(spec: Any) -> str:
    """``key=value, ...`` of the options a spec runs with when the user sets none: the
    options class defaults with the spec's ``preset`` applied over them (how ``zero1``
    is the zero options with ``stage=1``), in field order; preset keys the class does
    not declare are appended."""
    cls = getattr(spec, "options", None)
    preset = dict(getattr(spec, "preset", None) or {})
    if cls is None or not dataclasses.is_dataclass(cls):
        return ", ".join(f"{k}={v!r}" for k, v in preset.items())
    parts = []
    for f in dataclasses.fields(cls):
        if f.name in preset:
            parts.append(f"{f.name}={preset.pop(f.name)!r}")
        elif f.default is not dataclasses.MISSING:
            parts.append(f"{f.name}={f.default!r}")
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            parts.append(f"{f.name}={f.default_factory()!r}")  # type: ignore[misc]
        else:
            parts.append(f.name)
    parts.extend(f"{k}={v!r}" for k, v in preset.items())
    return ", ".join(parts)


def provided_names(pm: "CptPluginManager") -> tuple[dict[str, list[str]], list[str]]:
    """``{plugin name: ["strategy ddp", ...]}`` over all registries, and registry errors."""
    provided: dict[str, list[str]] = {}
    errors: list[str] = []
    for kind in REGISTRY_KINDS:
        try:
            registry = pm.registry(kind.key)
        except CptError as exc:
            errors.append(str(exc))
            continue
        for entry in registry:
            provided.setdefault(entry.provider, []).append(f"{kind.singular} {entry.spec.name}")
    return provided, errors


def plugin_rows(pm: "CptPluginManager", hook: str | None = None) -> list[dict[str, Any]]:
    """One dict per registered plugin (and per load failure) as shown by ``cpt plugins``."""
    provided, _ = provided_names(pm)
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        if hook is not None and hook not in hooks:
            continue
        info = pm.info.get(name)
        rows.append(
            {
                "plugin": name,
                "version": info.version if info else "",
                "source": info.source if info else "extra",
                "hooks": hooks,
                "provides": provided.get(name, []),
                "error": None,
            }
        )
    if hook is None:
        for failure in pm.load_failures:
            rows.append(
                {
                    "plugin": failure.name,
                    "version": "",
                    "source": failure.source,
                    "hooks": [],
                    "provides": [],
                    "error": failure.error,
                }
            )
    return rows


def add_listing_commands(app: typer.Typer, pm: "CptPluginManager") -> None:
    @app.command("plugins")
    def plugins_cmd(
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
        hook: Optional[str] = typer.Option(None, "--hook", help="Only plugins implementing this hook."),
    ) -> None:
        """List loaded plugins: version, source, hooks implemented, names provided, load failures."""
        if hook is not None and not hasattr(pm.hook, hook):
            from types import SimpleNamespace

            hooks: Registry = Registry("hook")  # reuse its "did you mean" message
            for h in (n for n in dir(pm.hook) if n.startswith("cpt_")):
                hooks.add(SimpleNamespace(name=h), "core")
            hooks.get(hook)  # raises "unknown hook ...; did you mean ..."
        rows = plugin_rows(pm, hook)
        _, errors = provided_names(pm)
        if as_json:
            typer.echo(json.dumps({"plugins": rows, "registry_errors": errors}, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title="cptcore plugins")
        for col in ("plugin", "version", "source", "hooks", "provides"):
            table.add_column(col, overflow="fold")
        for row in rows:
            if row["error"]:
                table.add_row(row["plugin"], "", row["source"], f"[red]failed to load: {row['error']}[/red]", "")
            else:
                table.add_row(
                    row["plugin"], row["version"], row["source"], "\n".join(row["hooks"]), "\n".join(row["provides"])
                )
        console = _console()
        console.print(table)
        for err in errors:
            console.print(f"[red]registry error:[/red] {err}")

    for kind in REGISTRY_KINDS:
        _add_registry_command(app, pm, kind)


def _console():
    """A rich console; wide (160 columns) when output is not a terminal, so piped
    listings keep whole names."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def registry_rows(pm: "CptPluginManager", key: str) -> list[dict[str, Any]]:
    registry = pm.registry(key)
    return [
        {
            "name": e.spec.name,
            "aliases": registry.aliases_of(e.spec.name),
            "provider": e.provider,
            "description": getattr(e.spec, "description", ""),
            "options": _option_summary(e.spec),
        }
        for e in registry
    ]


SAMPLE_CONVERSATION = (
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
)


def show_template(pm: "CptPluginManager", name: str, tokenizer: str | None = None) -> None:
    """Print a sample conversation rendered by chat template ``name``; trained spans
    (assistant content + end-of-turn, which carry the loss) are highlighted in green,
    masked text is dim. With ``tokenizer``, also print the token count and how many
    tokens carry loss, computed from offsets as ``cpt prepare sft`` does."""
    from rich.console import Console
    from rich.text import Text

    spec = pm.registry("templates").get(name)
    tok = None
    if tokenizer:
        tok = load_tokenizer(tokenizer)
        check_template_tokens(spec, tok)
    options = spec.options() if spec.options is not None else None
    segments = spec.render(list(SAMPLE_CONVERSATION), tokenizer=tok, options=options)
    console = Console()
    # Colours on a terminal; without one (pipes, CI logs) trained spans are bracketed.
    plain = console.no_color or not console.is_terminal
    text = Text()
    for seg in segments:
        if seg.train:
            text.append(f"⟦{seg.text}⟧" if plain else seg.text, style="bold black on green")
        else:
            text.append(seg.text, style="dim")
    legend = "⟦trained (loss)⟧, the rest masked (-100)" if plain else "[black on green] trained (loss) [/] [dim]masked (-100)[/dim]"
    console.print(f"[bold]template {spec.name}[/bold]: {legend}")
    console.print(text)
    if tok is not None:
        full, spans = segments_to_text(segments)
        ids, labels, _ = encode_with_spans(tok, full, spans)
        console.print(f"{len(ids)} tokens, {sum(1 for x in labels if x != IGNORE)} carry loss")


def _add_registry_command(app: typer.Typer, pm: "CptPluginManager", kind: "RegistryKind") -> None:
    if kind.key == "templates":
        def templates(
            as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
            show: Optional[str] = typer.Option(None, "--show", help="Render a sample conversation with this template, trained spans highlighted."),
            tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="With --show: tokenizer folder (needed by 'tokenizer'; adds token counts)."),
        ) -> None:
            if show is not None:
                show_template(pm, show, tokenizer)
                return
            rows = registry_rows(pm, kind.key)
            if as_json:
                typer.echo(json.dumps(rows, indent=2))
                return
            print_registry_table(kind.command, rows)

        templates.__doc__ = "List the registered chat templates; --show NAME renders a sample with the loss spans marked."
        app.command(kind.command)(templates)
        return

    def listing(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
        rows = registry_rows(pm, kind.key)
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        print_registry_table(kind.command, rows)

    listing.__doc__ = f"List the registered {kind.command} (name, aliases, provider, options)."
    app.command(kind.command)(listing)


def print_registry_table(title: str, rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("name", "aliases", "provider", "description", "options"):
        table.add_column(col, overflow="fold")
    from rich.markup import escape

    for row in rows:
        table.add_row(*(escape(x) for x in (row["name"], ", ".join(row["aliases"]), row["provider"], row["description"], row["options"])))
    if not rows:
        table.caption = "none registered"
    _console().print(table)
