"""Embedding-init methods as plugins (cpt_register_embedding_inits): the built-ins'
arithmetic, the registry, a third-party method, the listing and option errors."""

from __future__ import annotations

import json

import pytest

from cptcore.errors import CptError
from cptcore.hookspecs import hookimpl
from cptcore.model.embedding_init import InitRequest, ResizePlan, mean_rows
from cptcore.plugins import make_plugin_manager
from cptcore.specs import EmbeddingInitSpec


def _request(name, weight, plan, options=None, seed=0):
    import torch

    spec = make_plugin_manager().registry("embedding_inits").get(name)
    return spec, InitRequest(weight, plan, "input", torch.Generator().manual_seed(seed), options)


def _old_rows(n=3000, d=6, seed=1):
    """Old rows with a known non-trivial mean and covariance."""
    import torch

    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + torch.arange(d, dtype=torch.float64)).float()


def test_multivariate_rows_have_the_old_rows_mean_and_covariance():
    import torch

    from cptcore.model.embedding_init import mean_and_covariance

    old = _old_rows()
    n_new = 20000
    plan = ResizePlan(old_size=3000, new_size=3000 + n_new, sub_ids=[0] * n_new, owner=list(range(n_new)))
    spec, req = _request("multivariate", old, plan)
    rows = spec.init(req).to(torch.float64)
    assert rows.shape == (n_new, 6)
    mu, cov = mean_and_covariance(old)
    got_mu, got_cov = mean_and_covariance(rows)
    sd = cov.diagonal().sqrt()
    # sampling error: mean ~ sd/sqrt(n); covariance entry (i,j) ~ sqrt((S_ii S_jj + S_ij^2)/n)
    assert ((got_mu - mu).abs() < 5 * sd / n_new**0.5).all()
    tol = 5 * ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n_new).sqrt()
    assert ((got_cov - cov).abs() < tol).all()
    # and not just the mean of a few rows: the spread is the old rows' own
    assert torch.allclose(got_cov.diagonal(), cov.diagonal(), rtol=0.1)
    # scale multiplies the covariance
    from cptcore.model.embedding_init import MultivariateOptions

    spec, req = _request("multivariate", old, plan, MultivariateOptions(scale=0.01))
    small = mean_and_covariance(spec.init(req).to(torch.float64))[1]
    assert torch.allclose(small.diagonal(), 0.01 * cov.diagonal(), rtol=0.1)


def test_mean_noisy_mean_normal_zero():
    import torch

    old = _old_rows(n=50)
    plan = ResizePlan(old_size=50, new_size=53, sub_ids=[1, 2, 3, 4, 5, 6], owner=[0, 0, 1, 1, 1, 2])
    spec, req = _request("mean", old, plan)
    got = spec.init(req)
    assert torch.equal(got, mean_rows(old, plan))
    assert torch.equal(got[1], old[[3, 4, 5]].to(torch.float64).mean(0).float())
    n = 20000
    big = ResizePlan(old_size=50, new_size=50 + n, sub_ids=[7] * n, owner=list(range(n)))
    spec, req = _request("noisy_mean", old, big)
    noise = spec.init(req).to(torch.float64) - old[7].to(torch.float64)
    sigma = old.to(torch.float64).std(0)
    assert torch.allclose(noise.std(0), 0.1 * sigma, rtol=0.05) and (noise.mean(0).abs() < 5 * 0.1 * sigma / n**0.5).all()
    spec, req = _request("normal", old, big)
    assert spec.init(req).std().item() == pytest.approx(0.02, rel=0.02)
    spec, req = _request("zero", old, plan)
    assert torch.equal(spec.init(req), torch.zeros(3, 6)) and "comparison only" in spec.warning


class _HalfMean:
    """A third-party init registered through the hook."""

    @hookimpl
    def cpt_register_embedding_inits(self):
        return [EmbeddingInitSpec(name="half_mean", init=lambda req: 0.5 * req.sub_token_mean())]


def test_third_party_init_through_the_hook_and_zero_warns(tmp_path, mistral_tokenizer_dir, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cptcore.model.resize import plan_mean_init, resize_embeddings
    from cptcore.testing import make_tiny_llama
    from cptcore.tokenizer.expand import expand_tokenizer

    extra = tmp_path / "extra.txt"
    extra.write_text("量子\n法律法规\n", encoding="utf-8")
    expand_tokenizer(mistral_tokenizer_dir, extra, tmp_path / "new")
    old_tok, new_tok = AutoTokenizer.from_pretrained(mistral_tokenizer_dir), AutoTokenizer.from_pretrained(tmp_path / "new")
    src = make_tiny_llama(tmp_path / "m", mistral_tokenizer_dir, tie_word_embeddings=False)
    pm = make_plugin_manager(extra=[_HalfMean()])
    model = AutoModelForCausalLM.from_pretrained(src)
    o_in, o_out = model.get_input_embeddings().weight.clone(), model.get_output_embeddings().weight.clone()
    summary = resize_embeddings(model, old_tok, new_tok, init="half_mean", pm=pm)
    plan = plan_mean_init(old_tok, new_tok)
    assert summary["init"] == "half_mean" and summary["new_rows"] == 32002
    assert torch.equal(model.get_input_embeddings().weight[32000:], 0.5 * mean_rows(o_in, plan))
    assert torch.equal(model.get_output_embeddings().weight[32000:], 0.5 * mean_rows(o_out, plan))
    assert torch.equal(model.get_input_embeddings().weight[:32000], o_in)
    model = AutoModelForCausalLM.from_pretrained(src)
    resize_embeddings(model, old_tok, new_tok, init="zero")
    assert "warning: init 'zero' is for comparison only" in capsys.readouterr().err
    assert not model.get_input_embeddings().weight[32000:].any()
    model = AutoModelForCausalLM.from_pretrained(src)
    with pytest.raises(CptError, match=r"unknown option for embedding init 'multivariate'.*did you mean.*scale"):
        resize_embeddings(model, old_tok, new_tok, init="multivariate", init_options={"scal": "1"})
    with pytest.raises(CptError, match="embedding init 'noisy_mean': scale must be a finite number >= 0, got -1.0"):
        resize_embeddings(model, old_tok, new_tok, init="noisy_mean", init_options={"scale": "-1"})
    a = resize_embeddings(AutoModelForCausalLM.from_pretrained(src), old_tok, new_tok, init="hewitt", init_options={"scale": "0.5"})
    assert a["init"] == "multivariate" and a["init_options"] == {"scale": 0.5}


def test_embedding_inits_listing(cpt_cli):
    code, out = cpt_cli("embedding-inits", "--json")
    assert code == 0, out
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == {"mean", "noisy_mean", "multivariate", "normal", "zero"}
    assert rows["multivariate"]["aliases"] == ["hewitt"] and rows["multivariate"]["options"] == "scale=1.0"
