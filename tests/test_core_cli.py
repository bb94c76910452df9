import json
import os
import subprocess
import sys
import textwrap

from cptcore import NoiseSpec, __version__, hookimpl, make_plugin_manager
from cptcore.errors import ConfigError


class NoisePlugin:
    @hookimpl
    def cpt_register_noise(self):
        return [NoiseSpec(name="gauss", attach=lambda model, options: None, description="gaussian", aliases=("g",))]


class CommandPlugin:
    @hookimpl
    def cpt_register_commands(self, app, pm):
        @app.command("explode")
        def explode():
            raise ConfigError("training.max_steps: expected an integer")


def test_version(cpt_cli):
    code, out = cpt_cli("--version")
    assert code == 0 and out.strip() == f"cptcore {__version__}"


def test_plugins_json_lists_source_hooks_and_provided_names(cpt_cli):
    pm = make_plugin_manager(builtins=False, entrypoints=False, extra=[NoisePlugin()])
    code, out = cpt_cli("plugins", "--json", pm=pm)
    assert code == 0
    rows = json.loads(out)["plugins"]
    assert rows == [
        {
            "plugin": "NoisePlugin",
            "version": "",
            "source": "extra",
            "hooks": ["cpt_register_noise"],
            "provides": ["noise gauss"],
            "error": None,
        }
    ]


def test_plugins_shows_load_failures(cpt_cli, fake_entry_points):
    fake_entry_points({"broken": ImportError("no module named torch_xla")})
    pm = make_plugin_manager(builtins=False)
    code, out = cpt_cli("plugins", pm=pm)
    assert code == 0
    assert "broken" in out and "failed to load" in out
    code, out = cpt_cli("plugins", "--json", pm=pm)
    assert json.loads(out)["plugins"][0]["error"] == "ImportError: no module named torch_xla"


def test_plugins_hook_filter(cpt_cli):
    pm = make_plugin_manager(builtins=False, entrypoints=False, extra=[NoisePlugin(), CommandPlugin()])
    code, out = cpt_cli("plugins", "--json", "--hook", "cpt_register_commands", pm=pm)
    assert [r["plugin"] for r in json.loads(out)["plugins"]] == ["CommandPlugin"]
    code, out = cpt_cli("plugins", "--hook", "cpt_regster_noise", pm=pm)
    assert code == 1
    assert "unknown hook 'cpt_regster_noise'; did you mean 'cpt_register_noise'?" in out


def test_registry_listing_command(cpt_cli):
    pm = make_plugin_manager(builtins=False, entrypoints=False, extra=[NoisePlugin()])
    code, out = cpt_cli("noise", "--json", pm=pm)
    assert code == 0
    assert json.loads(out) == [
        {"name": "gauss", "aliases": ["g"], "provider": "NoisePlugin", "description": "gaussian", "options": ""}
    ]


def test_known_error_is_one_line_and_exit_1(cpt_cli):
    pm = make_plugin_manager(builtins=False, entrypoints=False, extra=[CommandPlugin()])
    code, out = cpt_cli("explode", pm=pm)
    assert code == 1
    lines = out.strip().splitlines()
    assert lines == [
        "error: training.max_steps: expected an integer",
        "hint: set CPT_DEBUG=1 to see the traceback",
    ]


def test_known_error_silent_on_nonzero_local_rank(cpt_cli):
    pm = make_plugin_manager(builtins=False, entrypoints=False, extra=[CommandPlugin()])
    code, out = cpt_cli("explode", pm=pm, env={"RANK": "1", "LOCAL_RANK": "1"})
    assert code == 1 and out.strip() == ""


def test_known_error_printed_by_first_rank_of_every_node(cpt_cli):
    """Global rank 2 is local rank 0 of node 1: it prints (issue 12 item 6)."""
    pm = make_plugin_manager(builtins=False, entrypoints=False, extra=[CommandPlugin()])
    code, out = cpt_cli("explode", pm=pm, env={"RANK": "2", "LOCAL_RANK": "0"})
    assert code == 1 and out.strip().splitlines()[0] == "error: training.max_steps: expected an integer"


def _run_cpt(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "cptcore.cli.main", *args], capture_output=True, text=True, env=e)


def test_plugin_flag_loads_a_file_and_its_command(tmp_path):
    f = tmp_path / "hello_plugin.py"
    f.write_text(
        textwrap.dedent(
            """
            from cptcore import hookimpl

            @hookimpl
            def cpt_register_commands(app, pm):
                @app.command("hello")
                def hello():
                    print("hello from a file plugin")
            """
        )
    )
    proc = _run_cpt("--plugin", str(f), "hello")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "hello from a file plugin"
    proc = _run_cpt("--plugin", str(tmp_path / "missing.py"), "plugins")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == f"error: plugin file not found: {tmp_path / 'missing.py'}"


def test_debug_env_shows_traceback(tmp_path):
    f = tmp_path / "boom.py"
    f.write_text(
        "from cptcore import hookimpl\nfrom cptcore.errors import CptError\n"
        "@hookimpl\ndef cpt_register_commands(app, pm):\n"
        "    @app.command('boom')\n    def boom():\n        raise CptError('kaput')\n"
    )
    proc = _run_cpt("--plugin", str(f), "boom")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    proc = _run_cpt("--plugin", str(f), "boom", env={"CPT_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "kaput" in proc.stderr


def test_import_and_help_do_not_import_heavy_libraries():
    heavy = ("torch", "transformers", "colossalai", "datasets")
    code = textwrap.dedent(
        f"""
        import sys
        import cptcore
        from cptcore.cli.app import run
        try:
            run(["--help"])
        except SystemExit:
            pass
        run(["plugins", "--json"])
        bad = [m for m in {heavy!r} if m in sys.modules]
        print("HEAVY:" + ",".join(bad))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY:"
