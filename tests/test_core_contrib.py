"""The contrib example package, installed (by .ci/run and the README's setup), is found
through its real entry point."""

import importlib.metadata
import json
import os

import pytest

from cptcore import make_plugin_manager


def _installed():
    return any(ep.name == "example_template" for ep in importlib.metadata.entry_points(group="cptcore"))


def test_installed_entry_point_is_discovered_listed_and_served(cpt_cli):
    if not _installed():
        if os.environ.get("CI"):
            pytest.fail("contrib/cptcore-example-template must be installed in CI")
        pytest.skip("contrib/cptcore-example-template is not installed (make install does it)")
    pm = make_plugin_manager()
    assert pm.info["example_template"].source == "entry point"
    assert pm.info["example_template"].version == "cptcore-example-template 0.1.0"
    entry = pm.registry("templates").entry("zephyr")
    assert entry.provider == "example_template"
    segments = entry.spec.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert "".join(s.text for s in segments) == "<|user|>\nhi</s>\n<|assistant|>\nyo</s>\n"
    assert [s.text for s in segments if s.train] == ["yo</s>"]
    code, out = cpt_cli("plugins", "--json", pm=pm)
    row = next(r for r in json.loads(out)["plugins"] if r["plugin"] == "example_template")
    assert row["source"] == "entry point" and row["provides"] == ["chat template zephyr"]
