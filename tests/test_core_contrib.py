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


def _zloss_installed():
    return any(ep.name == "zloss" for ep in importlib.metadata.entry_points(group="cptcore"))


def test_contrib_objective_z_loss_through_its_entry_point(cpt_cli):
    """contrib/cptcore-zloss (installed by make install): a second objective through
    cpt_register_objectives; coef=0 is causal_lm exactly, coef>0 adds coef*sum(lse^2)."""
    if not _zloss_installed():
        if os.environ.get("CI"):
            pytest.fail("contrib/cptcore-zloss must be installed in CI")
        pytest.skip("contrib/cptcore-zloss is not installed (make install does it)")
    import torch

    pm = make_plugin_manager()
    assert pm.info["zloss"].source == "entry point"
    code, out = cpt_cli("objectives", "--json", pm=pm)
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["z_loss"]["provider"] == "zloss" and "causal_lm" in rows
    registry = pm.registry("objectives")
    torch.manual_seed(0)
    logits = torch.randn(2, 9, 31)
    labels = torch.randint(0, 31, (2, 9))
    labels[0, :4] = -100
    batch = {"labels": labels}
    ce, n = registry.get("causal_lm").loss(logits, batch, None)
    spec, zero = registry.resolve("z_loss", {"coef": 0.0})
    assert spec.loss(logits, batch, zero)[0].item() == ce.item() and spec.count(batch) == n == 13
    spec, opts = registry.resolve("z_loss", {"coef": 0.01})
    lse = torch.logsumexp(logits[:, :-1][labels[:, 1:] != -100], dim=-1)
    got, _ = spec.loss(logits, batch, opts)
    torch.testing.assert_close(got, ce + 0.01 * (lse ** 2).sum())
