"""NEFTune (Jain et al. 2023) on the engine's batches: noise scaled by real, per-document
lengths, off in eval and while saving, options validated (no process group)."""

from __future__ import annotations

import math

import pytest
import torch

from cptcore.errors import ConfigError


# ------------------------------------------------------------------ NEFTune
def _tiny_hf(tmp_path):
    from transformers import AutoModelForCausalLM

    from cptcore.testing import make_tiny_llama

    make_tiny_llama(tmp_path, vocab_size=50, hidden_size=64)
    return AutoModelForCausalLM.from_pretrained(tmp_path)


def test_neftune_magnitude_uses_real_length_not_padded(tmp_path):
    """Fault of the anchors: NEFTune scaled by the padded length. The lengths arrive
    through the spec's declared batch_fields (handle.observe), not a model attribute;
    trailing padding gets no noise."""
    from cptcore.builtin_plugins.noise_neftune import NEFTuneOptions, attach_neftune

    model = _tiny_hf(tmp_path).train()
    emb = model.get_input_embeddings()
    ids = torch.randint(0, 50, (2, 400))
    with torch.no_grad():
        clean = emb(ids)
    handle = attach_neftune(model, NEFTuneOptions(alpha=8.0))
    pos = torch.stack([torch.arange(400), torch.cat([torch.arange(16), torch.arange(384)])])  # row 1: 16 real + pad span
    handle.observe({"position_ids": pos, "lengths": torch.tensor([400, 16])})
    torch.manual_seed(0)
    with torch.no_grad():
        noisy = emb(ids)
    diff = (noisy - clean).abs()
    d = 64
    bound = [8.0 / math.sqrt(400 * d), 8.0 / math.sqrt(16 * d)]
    real = [400, 16]
    for i in range(2):
        assert diff[i, :real[i]].max().item() <= bound[i] * (1 + 1e-5)
        assert diff[i, :real[i]].max().item() > 0.95 * bound[i]  # uniform over >= 1,024 draws reaches the edge
    assert diff[1, 16:].max().item() == 0.0  # padding: no noise
    handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(emb(ids), clean, rtol=0, atol=0)


def test_neftune_packed_row_noise_is_per_document(tmp_path):
    """Issue 12 item 12: a row packing documents of 40, 10 and 250 tokens gives each the
    noise it would get alone (alpha / sqrt(L_doc * d), Jain et al. 2023 Alg. 1), not the
    whole row's alpha / sqrt(300 * d) (HF's neftune_post_forward_hook on a packed row)."""
    from cptcore.builtin_plugins.noise_neftune import NEFTuneOptions, attach_neftune

    model = _tiny_hf(tmp_path).train()
    emb = model.get_input_embeddings()
    ids = torch.randint(0, 50, (1, 300))
    with torch.no_grad():
        clean = emb(ids)
    handle = attach_neftune(model, NEFTuneOptions(alpha=5.0))
    docs = [40, 10, 250]
    pos = torch.cat([torch.arange(n) for n in docs])[None]
    handle.observe({"position_ids": pos, "lengths": torch.tensor([300])})
    L, keep = handle.token_lengths(1, 300, torch.device("cpu"))
    assert L[0].tolist() == [40.0] * 40 + [10.0] * 10 + [250.0] * 250 and bool(keep.all())
    torch.manual_seed(1)
    with torch.no_grad():
        diff = (emb(ids) - clean).abs()[0]
    start = 0
    for n in docs:
        bound = 5.0 / math.sqrt(n * 64)
        part = diff[start:start + n]
        assert part.max().item() <= bound * (1 + 1e-5) and part.max().item() > 0.95 * bound
        start += n
    handle.observe({})  # no fields (the hook used outside the Trainer): the row length, as in HF
    L, _ = handle.token_lengths(1, 300, torch.device("cpu"))
    assert L.unique().tolist() == [300.0]
    handle.remove()


def test_neftune_inactive_in_eval(tmp_path):
    """Fault of the anchors: NEFTune active in evaluation."""
    from cptcore.builtin_plugins.noise_neftune import attach_neftune

    model = _tiny_hf(tmp_path)
    ids = torch.randint(0, 50, (1, 8))
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
        attach_neftune(model, None)
        after = model(input_ids=ids).logits
        model.train()
        noisy = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert not torch.equal(noisy, before)


def test_neftune_detached_while_saving(tmp_path, cpt_pm):
    """Fault of the anchors: noise left attached while saving. The plugin's cpt_save
    wrapper detaches the hook during the save and re-attaches it after."""
    from cptcore.builtin_plugins.noise_neftune import attach_neftune
    from cptcore.config import RunConfig
    from cptcore.hookspecs import hookimpl
    from cptcore.registries import call_provider

    model = _tiny_hf(tmp_path / "m").train()
    seen = {}

    class Probe:
        @hookimpl(tryfirst=True)
        def cpt_save(self, model, out_dir, config, tokenizer):
            seen["hooks"] = len(model.get_input_embeddings()._forward_hooks)
            ids = torch.arange(8)[None]
            with torch.no_grad():
                seen["same"] = torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
            return None

    cpt_pm.register(Probe(), name="probe")
    handle = attach_neftune(model, None)
    assert len(model.get_input_embeddings()._forward_hooks) == 1
    call_provider(cpt_pm, "cpt_save", model=model, out_dir=tmp_path / "out", config=RunConfig(), tokenizer=None)
    assert seen == {"hooks": 0, "same": True}
    assert handle.attached and len(model.get_input_embeddings()._forward_hooks) == 1
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.arange(8)[None]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits, rtol=0, atol=0)


def test_neftune_options_validated(cpt_pm):
    from cptcore.config import parse_options

    spec = cpt_pm.registry("noise").get("neftune")
    assert parse_options(spec.options, {"alpha": 10}, owner="noise").alpha == 10.0
    with pytest.raises(ConfigError, match="did you mean 'alpha'"):
        parse_options(spec.options, {"alpah": 1}, owner="noise")
