"""docs/cli.md is generated from the Typer app and must not go stale."""

from __future__ import annotations

import difflib
from pathlib import Path

from cptcore.cli.docgen import generate, root_command, walk

CLI_MD = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_is_up_to_date():
    expected = generate()
    actual = CLI_MD.read_text(encoding="utf-8") if CLI_MD.is_file() else ""
    if actual != expected:
        diff = "".join(
            list(difflib.unified_diff(actual.splitlines(True), expected.splitlines(True), "docs/cli.md", "generated"))[:60]
        )
        raise AssertionError(
            "docs/cli.md is stale; regenerate it with\n"
            "    .venv/bin/python -m cptcore.cli.docgen > docs/cli.md\n" + diff
        )


def test_every_command_and_option_is_documented(cpt_pm):
    text = generate(cpt_pm)
    commands = list(walk(root_command(cpt_pm)))
    assert len(commands) > 5
    for command, ctx in commands:
        assert f"`{ctx.command_path}`" in text
        for param in command.params:
            if param.param_type_name == "option" and not param.hidden:
                assert f"`{param.opts[0]}" in text, (ctx.command_path, param.opts)


def test_plugin_commands_appear(cpt_pm):
    import typer

    from cptcore import hookimpl

    class Extra:
        @hookimpl
        def cpt_register_commands(self, app, pm):
            sub = typer.Typer(help="Demo group.")

            @sub.command("hello")
            def hello(name: str = typer.Option("world", "--name", help="Who to greet.")) -> None:
                """Say hello."""

            app.add_typer(sub, name="demo")

    cpt_pm.register(Extra(), name="extra")
    text = generate(cpt_pm)
    assert "### `cpt demo hello`" in text
    assert "| `--name <str>` | Who to greet. [default: world] |" in text
