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


def write_tiny_sentencepiece_gguf(path: Path, sp_model: Path, hidden: int = 64, layers: int = 2) -> Path:
    """A random-init 2-layer LLaMA GGUF carrying a real SentencePiece vocabulary (f32),
    written with gguf-py's GGUFWriter the way llama.cpp's converter lays it out."""
    import gguf
    import numpy as np

    from cptcore.tokenizer.sources import load_model_proto

    proto = load_model_proto(sp_model)
    heads, kv, ffn, vocab = 4, 2, 128, len(proto.pieces)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-sentencepiece")
    w.add_context_length(2048)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list([p.piece.encode() for p in proto.pieces])
    w.add_token_scores([p.score for p in proto.pieces])
    w.add_token_types([int(p.type) for p in proto.pieces])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    rng = np.random.default_rng(0)

    def rand(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    rand("token_embd.weight", vocab, hidden)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        rand(f"blk.{i}.attn_q.weight", hidden, hidden)
        rand(f"blk.{i}.attn_k.weight", hidden * kv // heads, hidden)
        rand(f"blk.{i}.attn_v.weight", hidden * kv // heads, hidden)
        rand(f"blk.{i}.attn_output.weight", hidden, hidden)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        rand(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        rand(f"blk.{i}.ffn_up.weight", ffn, hidden)
        rand(f"blk.{i}.ffn_down.weight", hidden, ffn)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    rand("output.weight", vocab, hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_import_sentencepiece_gguf(tmp_path: Path, mistral_sp_model: Path, cpt_cli) -> None:
    """A SentencePiece GGUF (Mistral v1 vocabulary): the folder gets a real
    tokenizer.model and a fast tokenizer that encode like sentencepiece, BOS included."""
    import sentencepiece as spm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = write_tiny_sentencepiece_gguf(tmp_path / "tiny.gguf", mistral_sp_model)
    code, out = cpt_cli("model", "import-gguf", str(gguf_file), "--out", str(tmp_path / "hf"))
    assert code == 0, out
    folder = tmp_path / "hf"
    assert (folder / "tokenizer.model").stat().st_size < 1_000_000  # a SentencePiece model, not the GGUF
    sp = spm.SentencePieceProcessor(model_file=str(mistral_sp_model))
    fast = AutoTokenizer.from_pretrained(folder)
    slow = AutoTokenizer.from_pretrained(folder, use_fast=False)
    assert (fast.bos_token, fast.eos_token, fast.unk_token) == ("<s>", "</s>", "<unk>")
    lines = [json.loads(r)["text"].split("\n") for r in bundled("zh_law_heldout.jsonl").open(encoding="utf-8")]
    lines = [line for doc in lines for line in doc][:400] + ["Hello  world", "  indented line", "x = 1"]
    want = [[1] + ids for ids in sp.encode(lines)]  # add_bos_token from the GGUF
    assert fast(lines)["input_ids"] == want
    assert [slow.encode(line) for line in lines] == want
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.vocab_size == 32000 and model.config.eos_token_id == 2


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
