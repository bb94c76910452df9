from dataclasses import dataclass

import pytest

from cptcore import StrategySpec, hookimpl, make_plugin_manager
from cptcore.errors import RegistryError
from cptcore.registry import Registry


def _spec(name, aliases=()):
    return StrategySpec(name=name, build=lambda options, config: None, aliases=aliases)


def test_get_by_name_and_alias():
    reg = Registry("strategy")
    spec = _spec("hybrid3d", aliases=("3d",))
    reg.add(spec, "builtin")
    assert reg.get("hybrid3d") is spec
    assert reg.get("3d") is spec
    assert reg.names() == ["hybrid3d"]
    assert reg.all_names() == ["3d", "hybrid3d"]
    assert reg.aliases_of("hybrid3d") == ["3d"]
    assert "3d" in reg and "2d" not in reg


def test_unknown_name_suggests_closest_and_lists_valid():
    reg = Registry("strategy")
    for name in ("ddp", "zero2", "gemini"):
        reg.add(_spec(name), "builtin")
    with pytest.raises(RegistryError) as exc:
        reg.get("zer02")
    assert str(exc.value) == (
        "unknown strategy 'zer02'; did you mean 'zero2'? (valid: ddp, gemini, zero2)"
    )


def test_unknown_name_without_close_match():
    reg = Registry("noise")
    reg.add(_spec("neftune"), "builtin")
    with pytest.raises(RegistryError, match=r"^unknown noise 'xyz' \(valid: neftune\)$"):
        reg.get("xyz")


def test_duplicate_name_names_both_providers():
    reg = Registry("strategy")
    reg.add(_spec("ddp"), "strategy_ddp")
    with pytest.raises(RegistryError, match="strategy 'ddp' is registered twice: by strategy_ddp and by my_plugin"):
        reg.add(_spec("ddp"), "my_plugin")


def test_alias_clashing_with_a_name_is_a_duplicate():
    reg = Registry("strategy")
    reg.add(_spec("zero2"), "a")
    with pytest.raises(RegistryError, match="by a and by b"):
        reg.add(_spec("other", aliases=("zero2",)), "b")


def test_duplicate_across_plugins_through_the_hook():
    class One:
        @hookimpl
        def cpt_register_strategies(self):
            return [_spec("twin")]

    class Two:
        @hookimpl
        def cpt_register_strategies(self):
            return [_spec("twin")]

    pm = make_plugin_manager(builtins=False, entrypoints=False, extra=[One(), Two()])
    with pytest.raises(RegistryError, match="registered twice: by One and by Two"):
        pm.registry("strategies")


def test_registration_hook_must_return_a_list():
    from cptcore.errors import PluginError

    class Bad:
        @hookimpl
        def cpt_register_noise(self):
            return "neftune"

    pm = make_plugin_manager(builtins=False, entrypoints=False, extra=[Bad()])
    with pytest.raises(PluginError, match="cpt_register_noise must return a list"):
        pm.registry("noise")
