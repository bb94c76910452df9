"""``make_app(pm)``: the Typer app, with one-line errors for known failures."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Optional

import typer
import typer.core

from ..errors import CptError
from ..plugins import make_plugin_manager
from .listing import add_listing_commands
from .. import __version__
from ..train.lifetime import write_error_file

if TYPE_CHECKING:
    from ..plugins import CptPluginManager

# The click that typer raises: vendored as ``typer._click`` since typer 0.2x, the
# ``click`` package before; found through a public typer name so both work (click is
# not a dependency of cptcore, nor of typer >= 0.2x).
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_click_exceptions = sys.modules[ClickException.__module__]
EXITS = tuple({typer.Exit, getattr(_click_exceptions, "Exit", typer.Exit)})
ABORTS = tuple({typer.Abort, getattr(_click_exceptions, "Abort", typer.Abort)})


def is_rank_zero() -> bool:
    """True unless this process is a non-zero rank of a distributed launch."""
    return os.environ.get("RANK", "0") in ("", "0")


def is_local_rank_zero() -> bool:
    """True unless this process is a non-zero rank *of its node* (``LOCAL_RANK``)."""
    return os.environ.get("LOCAL_RANK", "0") in ("", "0")


def print_error(exc: BaseException) -> None:
    """Print ``error: <message>`` (one line, by the first rank of every node) and the
    ``CPT_DEBUG`` hint; under torchrun every rank also records the message for its
    launcher (:func:`cptcore.train.lifetime.write_error_file`)."""
    message = " ".join(str(exc).split("\n")) or type(exc).__name__
    printing = is_local_rank_zero()
    write_error_file(message, printed=printing)
    if not printing:
        return
    print(f"error: {message}", file=sys.stderr)
    print("hint: set CPT_DEBUG=1 to see the traceback", file=sys.stderr)


def print_usage_error(exc: Any) -> None:
    """``error: <click's message, did-you-mean included> (try 'cpt CMD --help')`` in
    one line on stderr (rank 0 only)."""
    if not is_rank_zero():
        return
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    hint = f" (try '{ctx.command_path} --help')" if ctx is not None else ""
    print(f"error: {message}{hint}", file=sys.stderr)


def debug() -> bool:
    return os.environ.get("CPT_DEBUG", "") not in ("", "0", "false", "no")


class _CptGroup(typer.core.TyperGroup):
    """Turns a :class:`CptError` raised by any command into one line and exit status 1."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CptError as exc:
            if debug():
                raise
            print_error(exc)
            raise typer.Exit(1) from None


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cptcore {__version__}")
        raise typer.Exit()


def make_app(pm: "CptPluginManager") -> typer.Typer:
    """Build the ``cpt`` Typer app for plugin manager ``pm``.

    The core adds ``plugins`` and one listing command per registry; every other command
    group (``prepare``, ``tokenizer``, ``model``, ``train``...) comes from a plugin's
    ``cpt_register_commands(app, pm)``, built-ins included.
    """
    app = typer.Typer(
        cls=_CptGroup,
        name="cpt",
        help="cptcore: continual pretraining and SFT of LLaMA-family models.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
        ),
        plugin: Optional[list[str]] = typer.Option(
            None, "--plugin", metavar="FILE", help="Load a plugin from a .py file (repeatable; read before the command runs; cpt train records it with its sha256 and --resume loads it again)."
        ),
    ) -> None:
        """cptcore: continual pretraining and SFT of LLaMA-family models."""

    add_listing_commands(app, pm)
    pm.hook.cpt_register_commands(app=app, pm=pm)
    return app


def plugin_files_from_argv(argv: list[str]) -> list[str]:
    """The values of every ``--plugin FILE`` / ``--plugin=FILE`` in ``argv``."""
    files: list[str] = []
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if arg == "--plugin" and i + 1 < len(argv):
            files.append(argv[i + 1])
            next(it, None)
        elif arg.startswith("--plugin="):
            files.append(arg.split("=", 1)[1])
    return files


def run(argv: list[str] | None = None) -> int:
    """Entry point: build the plugin manager (with ``--plugin`` files), the app, run it.

    Returns the process exit status.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        pm = make_plugin_manager(files=plugin_files_from_argv(args))
        app = make_app(pm)
    except CptError as exc:
        if debug():
            raise
        print_error(exc)
        return 1
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="cpt", standalone_mode=False)
    except EXITS as exc:
        return exc.exit_code
    except ClickException as exc:  # usage errors: one line, exit status 2
        print_usage_error(exc)
        return exc.exit_code
    except ABORTS:
        print("Aborted!", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0
