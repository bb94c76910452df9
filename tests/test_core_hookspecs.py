"""Every hook must be documented in docs/plugins.md and exercised by some test, and every
hook spec's docstring must state when it is called, what it returns and an example."""

from pathlib import Path

import pytest

from cptcore import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("cpt_"))


def test_there_are_hooks_for_every_concern():
    for needed in (
        "cpt_tokenize_fn",
        "cpt_register_packers",
        "cpt_build_model",
        "cpt_register_strategies",
        "cpt_register_noise",
        "cpt_save",
        "cpt_register_chat_templates",
        "cpt_register_loggers",
        "cpt_register_commands",
    ):
        assert needed in HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_in_plugin_guide(hook):
    guide = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert f"`{hook}" in guide, f"{hook} is missing from docs/plugins.md"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    this = Path(__file__).name
    used = [p.name for p in (ROOT / "tests").glob("test_*.py") if p.name != this and hook in p.read_text(encoding="utf-8")]
    assert used, f"no test mentions {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_docstring_has_contract(hook):
    doc = getattr(hookspecs, hook).__doc__ or ""
    assert "Called:" in doc and "Example::" in doc and ("Returns:" in doc or "Returns" in doc)


def test_provider_hooks_are_firstresult_and_registration_hooks_collect():
    import pluggy

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for hook in HOOKS:
        opts = getattr(pm.hook, hook).spec.opts
        if hook.startswith("cpt_register_"):
            assert not opts.get("firstresult"), hook
        else:
            assert opts.get("firstresult"), hook
