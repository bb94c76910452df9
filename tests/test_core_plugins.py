import sys
import textwrap

import pytest

from cptcore import NoiseSpec, hookimpl, make_plugin_manager
from cptcore.errors import PluginError
from cptcore.plugins import builtin_modules


class GoodPlugin:
    @hookimpl
    def cpt_register_noise(self):
        return [NoiseSpec(name="gauss", attach=lambda model, options: None)]


def test_broken_entry_point_is_reported_and_the_rest_load(fake_entry_points, capsys):
    fake_entry_points({"broken": ImportError("No module named 'nope'"), "good": GoodPlugin()})
    pm = make_plugin_manager(builtins=False)
    assert pm.has_plugin("good")
    assert not pm.has_plugin("broken")
    assert [f.name for f in pm.load_failures] == ["broken"]
    assert "ImportError: No module named 'nope'" in pm.load_failures[0].error
    err = capsys.readouterr().err
    assert "skipping plugin 'broken' (entry point): ImportError: No module named 'nope'" in err
    assert pm.registry("noise").get("gauss").name == "gauss"


def test_strict_mode_makes_a_load_failure_fatal(fake_entry_points, monkeypatch):
    monkeypatch.setenv("CPT_STRICT_PLUGINS", "1")
    fake_entry_points({"broken": RuntimeError("boom"), "good": GoodPlugin()})
    with pytest.raises(PluginError, match="plugin 'broken' failed to load: RuntimeError: boom"):
        make_plugin_manager(builtins=False)


def test_disable_plugins_env_blocks_by_name(fake_entry_points, monkeypatch):
    monkeypatch.setenv("CPT_DISABLE_PLUGINS", "good, other")
    fake_entry_points({"good": GoodPlugin()})
    pm = make_plugin_manager(builtins=False)
    assert not pm.has_plugin("good")
    assert pm.is_blocked("good")


def test_blocked_argument_blocks_extras():
    pm = make_plugin_manager(builtins=False, entrypoints=False, extra=[GoodPlugin()], blocked=["GoodPlugin"])
    assert not pm.has_plugin("GoodPlugin")


def test_blocked_argument_blocks_builtins():
    names = [m.rsplit(".", 1)[1] for m in builtin_modules()]
    if not names:
        pytest.skip("no built-in plugins yet")
    pm = make_plugin_manager(entrypoints=False, blocked=[names[0]])
    assert not pm.has_plugin(names[0])


def test_misspelled_hook_is_an_error_naming_the_plugin():
    class Typo:
        @hookimpl
        def cpt_register_strategy(self):  # missing "ies"
            return []

    with pytest.raises(PluginError, match="Typo") as exc:
        make_plugin_manager(builtins=False, entrypoints=False, extra=[Typo()])
    assert "cpt_register_strategy" in str(exc.value)


def test_plugin_from_file(tmp_path):
    f = tmp_path / "myplug.py"
    f.write_text(
        textwrap.dedent(
            """
            from cptcore import NoiseSpec, hookimpl

            @hookimpl
            def cpt_register_noise():
                return [NoiseSpec(name="filenoise", attach=lambda model, options: None)]
            """
        )
    )
    pm = make_plugin_manager(builtins=False, entrypoints=False, files=[f])
    assert pm.info["file:myplug.py"].source == "file"
    assert pm.registry("noise").entry("filenoise").provider == "file:myplug.py"


def test_plugin_file_that_raises_is_a_one_line_error(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("raise ValueError('nope')\n")
    with pytest.raises(PluginError, match=r"plugin file .*bad.py failed to import: ValueError: nope"):
        make_plugin_manager(builtins=False, entrypoints=False, files=[f])
    with pytest.raises(PluginError, match="plugin file not found"):
        make_plugin_manager(builtins=False, entrypoints=False, files=[tmp_path / "missing.py"])


def test_each_manager_is_fresh():
    a = make_plugin_manager(builtins=False, entrypoints=False, extra=[GoodPlugin()])
    b = make_plugin_manager(builtins=False, entrypoints=False)
    assert a.has_plugin("GoodPlugin") and not b.has_plugin("GoodPlugin")


def test_builtins_register_before_extras_so_firstresult_extras_win():
    class Provider:
        @hookimpl
        def cpt_build_model(self, config):
            return "third-party model"

    pm = make_plugin_manager(entrypoints=False, extra=[Provider()])
    assert pm.hook.cpt_build_model(config=None) == "third-party model"


def test_provider_none_from_all_is_an_error():
    from cptcore.registries import call_provider

    pm = make_plugin_manager(builtins=False, entrypoints=False)
    with pytest.raises(PluginError, match="no plugin provided cpt_save"):
        call_provider(pm, "cpt_save", model=None, out_dir=None, config=None, tokenizer=None)


def test_wrapper_hook_sees_provider_result():
    class Provider:
        @hookimpl(trylast=True)
        def cpt_tokenize_fn(self, tokenizer_path, add_bos, add_eos):
            return "base"

    class Wrapper:
        @hookimpl(wrapper=True)
        def cpt_tokenize_fn(self, tokenizer_path, add_bos, add_eos):
            result = yield
            return f"wrapped({result})"

    pm = make_plugin_manager(builtins=False, entrypoints=False, extra=[Provider(), Wrapper()])
    assert pm.hook.cpt_tokenize_fn(tokenizer_path="x", add_bos=None, add_eos=None) == "wrapped(base)"


def test_import_has_no_side_effects():
    import importlib

    import cptcore.plugins

    importlib.reload(cptcore.plugins)  # importing again registers nothing anywhere
    pm = make_plugin_manager(builtins=False, entrypoints=False)
    assert pm.list_name_plugin() == []
