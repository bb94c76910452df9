"""SmolLM2-135M-Instruct imported from its GGUF (fixture ``smollm2_dir``, cached per
session), then its byte-level BPE vocabulary expanded with Chinese tokens and resized."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cptcore.assets import bundled
from cptcore.errors import CptError

SENTENCE = "Python is a high-level, general-purpose programming language. Its design philosophy emphasizes code readability."


def test_import_refuses_bad_input(tmp_path: Path, cpt_cli) -> None:
    from cptcore.model.gguf import import_gguf

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CptError, match="junk.gguf: not a readable GGUF file"):
        import_gguf(junk, tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    code, out = cpt_cli("model", "import-gguf", str(junk), "--out", str(tmp_path / "busy"))
    assert code == 1 and out.splitlines()[0] == f"error: output folder {tmp_path / 'busy'} exists and is not empty (pass --overwrite to replace it)"
    code, out = cpt_cli("model", "import-gguf", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "o"))
    assert code == 1 and "GGUF file not found" in out


@pytest.mark.slow
def test_imported_folder_is_clean(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert "tokenizer.model" not in names and not any(n.endswith(".gguf") for n in names)
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert (config["torch_dtype"], config["vocab_size"], config["tie_word_embeddings"]) == ("float32", 49152, True)
    assert (config["bos_token_id"], config["eos_token_id"], config["num_hidden_layers"]) == (1, 2, 30)
    gen = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok("Hello world").input_ids == [19556, 905]  # no BOS
    assert (tok.eos_token, tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == ("<|im_end|>", 2, 1, 2)
    assert tok("In 2024").input_ids == [788, 216, 34, 32, 34, 36]  # SmolLM2 splits digits
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    bundled_tok = json.loads((Path(__file__).parent / "data/tokenizers/smollm2/tokenizer.json").read_text())
    assert json.loads((smollm2_dir / "tokenizer.json").read_text()) == bundled_tok


@pytest.mark.slow
def test_imported_model_perplexity_and_generation(smollm2_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    ids = tok(SENTENCE, return_tensors="pt").input_ids
    with torch.no_grad():
        ppl = model(ids, labels=ids).loss.exp().item()
        # what transformers' own GGUF tokenizer does: prepend <|im_start|> as BOS
        wrong = torch.cat([torch.tensor([[1]]), ids], dim=1)
        ppl_wrong = model(wrong, labels=wrong).loss.exp().item()
    assert ppl < 15 and ppl_wrong > 1.5 * ppl
    prompt = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert "Paris" in tok.decode(out[0, prompt.input_ids.shape[1]:])


@pytest.mark.slow
def test_smollm2_bpe_expand_then_resize(tmp_path: Path, smollm2_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cptcore.model.resize import plan_mean_init, resize_model_folder
    from cptcore.tokenizer.expand import expand_tokenizer
    from cptcore.tokenizer.train import TrainOptions, train_sentencepiece

    zh, _ = train_sentencepiece([bundled("zh_law_train.jsonl")], tmp_path / "zh", TrainOptions(vocab_size=2000))
    report = expand_tokenizer(smollm2_dir, zh, tmp_path / "tok")
    assert report["method"] == "bpe" and report["added"] > 1000 and report["unreachable"] == []
    summary = resize_model_folder(smollm2_dir, tmp_path / "tok", tmp_path / "model")
    n_old, n_new = 49152, report["vocab_after"]
    assert (summary["old_rows"], summary["new_rows"], summary["tied"], summary["dtype"]) == (n_old, n_new, True, "float32")

    old_m = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    new_m = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    w, old_w = new_m.get_input_embeddings().weight, old_m.get_input_embeddings().weight
    assert w.shape == (n_new, 576) and new_m.lm_head.weight.data_ptr() == w.data_ptr()  # still tied, same storage
    assert torch.equal(w[:n_old], old_w)

    old_tok, new_tok = AutoTokenizer.from_pretrained(smollm2_dir), AutoTokenizer.from_pretrained(tmp_path / "model")
    plan = plan_mean_init(old_tok, new_tok)
    rows: dict[int, list[int]] = {}
    for sub, row in zip(plan.sub_ids, plan.owner):
        rows.setdefault(row, []).append(sub)
    checked_text = 0
    for row, subs in rows.items():
        assert torch.equal(w[n_old + row], old_w[subs].double().mean(0).float())
        text = new_tok.decode([n_old + row])
        if "\ufffd" not in text and not text.startswith(" "):  # whole characters: check the decomposition too
            assert old_tok.encode(text) == subs
            checked_text += 1
    assert checked_text > 1000

    with torch.no_grad():
        for text in (SENTENCE, "The capital of France is Paris."):
            ids = old_tok(text, return_tensors="pt").input_ids
            assert new_tok(text, return_tensors="pt").input_ids.tolist() == ids.tolist()
            assert torch.equal(new_m(ids).logits[..., :n_old], old_m(ids).logits)
