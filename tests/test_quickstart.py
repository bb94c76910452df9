"""``cpt quickstart``: the whole workflow end to end (tiny step counts)."""

from __future__ import annotations

import json
import math

import pytest

from cptcore.quickstart import QuickstartOptions, run_quickstart


def _check_outputs(out, result, steps, mbs, length):
    run = out / "run"
    for path in (
        out / "data" / "train" / "manifest.json",
        out / "data" / "heldout" / "manifest.json",
        run / "config.yaml",
        run / "logs" / "metrics.jsonl",
        run / "summary.json",
        run / "final" / "config.json",
        run / "report" / "curves.png",
        run / "report" / "summary.md",
        out / "quickstart.json",
    ):
        assert path.is_file(), path
    assert result.steps == steps
    # splice packing fills every training row: each step sees mbs x length real tokens
    assert result.tokens_trained == steps * mbs * length
    engine = json.loads((run / "summary.json").read_text())
    assert engine["steps"] == steps and engine["tokens_trained"] == result.tokens_trained
    # the export, reloaded from disk, scores the held-out batches as the engine's final eval did
    assert result.perplexity_after == pytest.approx(engine["final_eval"]["law"]["perplexity"], rel=1e-4)
    # the ledger: law (domain) and en (retained, budget 0.05) scored at step 0 and at the end, in bpb
    rows = [json.loads(l) for l in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and {"eval/law/bpb", "eval/en/bpb"} <= set(rows[0]) and "eval/en/bpb" in rows[-1]
    table = {r["set"]: r for r in result.ledger}
    assert table["law"]["role"] == "domain" and table["en"]["role"] == "retained" and table["en"]["budget"] == 0.05
    assert table["law"]["baseline"] == rows[0]["eval/law/bpb"] and table["en"]["final"] == rows[-1]["eval/en/bpb"]
    assert result.perplexity_before == rows[0]["eval/law/perplexity"]
    assert math.isfinite(result.perplexity_before) and result.perplexity_before > 1.0
    md = (run / "report" / "summary.md").read_text()
    # the report's perplexity is pooled over law and en (eval_perplexity), from step 0 to the end
    assert f"{rows[0]['eval_perplexity']:.3f} → {engine['final_eval_perplexity']:.3f}" in md
    saved = json.loads((out / "quickstart.json").read_text())
    assert saved["perplexity_before"] == result.perplexity_before
    assert saved["tokens_trained"] == result.tokens_trained


@pytest.mark.slow
def test_quickstart_on_smollm2(tmp_path, smollm2_dir):
    """The real thing: SmolLM2-135M from its GGUF, real Chinese text, NEFTune, 2 steps."""
    out = tmp_path / "qs"
    opts = QuickstartOptions(out=out, max_steps=2, eval_batches=2, max_new_tokens=4, lr=1e-4)
    result = run_quickstart(opts, say=print)
    _check_outputs(out, result, steps=2, mbs=2, length=256)
    assert result.model_dir == str(smollm2_dir)
    assert result.heldout_tokens == 2 * 2 * 255  # 2 batches of 2 full rows, shifted labels
    assert result.generation.startswith(opts.prompt)
    cfg = (out / "run" / "config.yaml").read_text()
    assert "name: neftune" in cfg and "alpha: 5.0" in cfg


@pytest.mark.slow
def test_quickstart_cli_with_tiny_model_and_rerun(tmp_path, cpt_cli, smollm2_tokenizer_dir):
    from cptcore.testing import make_tiny_llama

    model = make_tiny_llama(tmp_path / "tiny", smollm2_tokenizer_dir)
    out = tmp_path / "qs"
    args = ("quickstart", "--model", str(model), "--out", str(out), "--max-steps", "1",
            "--eval-batches", "1", "--max-new-tokens", "2", "--max-length", "64", "--micro-batch-size", "1")
    code, output = cpt_cli(*args)
    assert code == 0, output
    assert "held-out perplexity" in output and "tokens trained" in output
    assert "law bpb (domain)" in output and "en bpb (retained)" in output and "forgetting ledger" in output
    first = json.loads((out / "quickstart.json").read_text())
    assert first["tokens_trained"] == 64
    # a second run replaces the folder it made itself, with identical figures (seeded)
    code, output = cpt_cli(*args)
    assert code == 0, output
    again = json.loads((out / "quickstart.json").read_text())
    assert again["perplexity_before"] == first["perplexity_before"]
    assert again["perplexity_after"] == first["perplexity_after"]


def test_quickstart_refuses_foreign_out_dir_and_bad_values(tmp_path, cpt_cli):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code, output = cpt_cli("quickstart", "--out", str(foreign))
    assert code == 1
    assert output.startswith(f"error: {foreign} exists and was not made by cpt quickstart")
    assert (foreign / "notes.txt").read_text() == "keep me"
    code, output = cpt_cli("quickstart", "--out", str(tmp_path / "x"), "--max-steps", "0")
    assert code == 1 and "--max-steps must be >= 1, got 0" in output
    assert not (tmp_path / "x").exists()
