"""cpt model resize on tiny random-init LLaMAs carrying the real Mistral v1 tokenizer,
expanded with a Chinese SentencePiece model trained here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cptcore.assets import bundled
from cptcore.errors import CptError
from cptcore.testing import make_tiny_llama
from cptcore.tokenizer.expand import expand_tokenizer
from cptcore.tokenizer.train import TrainOptions, train_sentencepiece

DATA = Path(__file__).resolve().parent / "data"
SPACE = "\u2581"


@pytest.fixture(scope="module")
def toks(tmp_path_factory, mistral_sp_model: Path) -> tuple[Path, Path]:
    """(Mistral v1 folder with sentencepiece behaviour, its Chinese expansion + ' 量子')."""
    from transformers import AutoTokenizer, LlamaTokenizer

    root = tmp_path_factory.mktemp("resize_toks")
    base = root / "base"
    LlamaTokenizer(vocab_file=str(mistral_sp_model), legacy=True).save_pretrained(base)
    AutoTokenizer.from_pretrained(base).save_pretrained(base)
    zh, _ = train_sentencepiece([bundled("zh_law_train.jsonl")], root / "zh", TrainOptions(vocab_size=2000))
    extra = root / "extra.txt"
    extra.write_text(" 量子\n", encoding="utf-8")
    step = expand_tokenizer(base, zh, root / "step")
    assert step["added"] > 500
    expand_tokenizer(root / "step", extra, root / "new")
    return base, root / "new"


def _english_ids(tok) -> list[list[int]]:
    rows = [json.loads(r)["text"][:2000] for r in (DATA / "en_python_docs_sample.jsonl").open(encoding="utf-8")][:4]
    return [tok(r).input_ids[:256] for r in rows]


def _expected_means(weight, plan):
    import torch

    out = []
    start = 0
    by_row: dict[int, list[int]] = {}
    for sub, row in zip(plan.sub_ids, plan.owner):
        by_row.setdefault(row, []).append(sub)
    for row in range(plan.new_size - plan.old_size):
        out.append(weight[by_row[row]].to(torch.float64).mean(0).to(weight.dtype))
    return torch.stack(out)


def test_untied_mean_init_exact_and_old_outputs_unchanged(tmp_path: Path, toks) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cptcore.model.resize import plan_mean_init, resize_model_folder

    base, new = toks
    src = make_tiny_llama(tmp_path / "m", base, tie_word_embeddings=False)
    summary = resize_model_folder(src, new, tmp_path / "out")
    old_m = AutoModelForCausalLM.from_pretrained(src)
    new_m = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    old_tok, new_tok = AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(tmp_path / "out")
    n_old, n_new = 32000, len(new_tok)
    assert summary["old_rows"] == n_old and summary["new_rows"] == n_new and summary["tied"] is False
    w_in, w_out = new_m.get_input_embeddings().weight, new_m.get_output_embeddings().weight
    assert w_in.shape == w_out.shape == (n_new, 64) and new_m.config.vocab_size == n_new
    o_in, o_out = old_m.get_input_embeddings().weight, old_m.get_output_embeddings().weight
    assert torch.equal(w_in[:n_old], o_in) and torch.equal(w_out[:n_old], o_out)
    plan = plan_mean_init(old_tok, new_tok)
    assert torch.equal(w_in[n_old:], _expected_means(o_in, plan))
    assert torch.equal(w_out[n_old:], _expected_means(o_out, plan))  # separately: not the input means
    assert not torch.equal(w_in[n_old:], w_out[n_old:])
    # independent decomposition: a whole-character piece without ▁ = the old tokenizer's
    # ids for its text, minus the dummy-prefix ▁
    tid = new_tok.convert_tokens_to_ids("人民政府")
    subs = [i for i in old_tok.encode("人民政府", add_special_tokens=False) if i != 28705]
    assert torch.equal(w_in[tid], o_in[subs].to(torch.float64).mean(0).float())
    # same logits over the old ids on English text (the old tokenizer's ids)
    for ids in _english_ids(old_tok):
        assert new_tok.decode(ids) == old_tok.decode(ids)
        x = torch.tensor([ids])
        with torch.no_grad():
            assert torch.equal(new_m(x).logits[..., :n_old], old_m(x).logits)


def test_lone_space_marker_left_out_of_the_mean(toks) -> None:
    from transformers import AutoTokenizer

    from cptcore.model.resize import plan_mean_init

    base, new = toks
    old_tok, new_tok = AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(new)
    assert SPACE + "量" not in old_tok.get_vocab()
    plan = plan_mean_init(old_tok, new_tok)
    row = new_tok.convert_tokens_to_ids(SPACE + "量子") - plan.old_size
    subs = [s for s, r in zip(plan.sub_ids, plan.owner) if r == row]
    raw = [p.id for p in old_tok.backend_tokenizer.model.tokenize(SPACE + "量子")]
    assert raw[0] == old_tok.convert_tokens_to_ids(SPACE) and subs == raw[1:]


def test_tied_bf16_stays_tied_and_bf16(tmp_path: Path, toks) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from cptcore.model.resize import resize_model_folder

    base, new = toks
    src = make_tiny_llama(tmp_path / "fp32", base, tie_word_embeddings=True)
    m = AutoModelForCausalLM.from_pretrained(src).to(torch.bfloat16)
    m.save_pretrained(tmp_path / "bf16")
    (tmp_path / "bf16").joinpath("x").unlink(missing_ok=True)
    for f in src.glob("*token*"):
        (tmp_path / "bf16" / f.name).write_bytes(f.read_bytes())
    summary = resize_model_folder(tmp_path / "bf16", new, tmp_path / "out", init="normal")
    assert summary["tied"] is True and summary["dtype"] == "bfloat16" and summary["init"] == "normal"
    r = AutoModelForCausalLM.from_pretrained(tmp_path / "out", torch_dtype="auto")
    w = r.get_input_embeddings().weight
    assert w.dtype == torch.bfloat16 and r.lm_head.weight.data_ptr() == w.data_ptr()
    assert torch.equal(w[:32000], m.get_input_embeddings().weight)
    assert torch.isfinite(w[32000:].float()).all() and w[32000:].float().std() > 0


def test_resize_errors(tmp_path: Path, toks, smollm2_tokenizer_dir: Path) -> None:
    from cptcore.model.resize import resize_model_folder

    base, new = toks
    small = make_tiny_llama(tmp_path / "small", base)
    with pytest.raises(CptError, match=r"does not extend the model's tokenizer: id 0 is '<unk>' in the model's, '<\|endoftext\|>' in it$"):
        resize_model_folder(small, smollm2_tokenizer_dir, tmp_path / "o1")
    big = make_tiny_llama(tmp_path / "big", new)
    with pytest.raises(CptError, match=rf"^target vocabulary 32000 \({base}\) is smaller than the model's \d+ embedding rows$"):
        resize_model_folder(big, base, tmp_path / "o2")
    bare = make_tiny_llama(tmp_path / "bare", vocab_size=32000)
    with pytest.raises(CptError, match="no tokenizer in model folder"):
        resize_model_folder(bare, new, tmp_path / "o3")
    with pytest.raises(CptError, match="unknown embedding init 'zeros'.*did you mean.*zero"):
        resize_model_folder(big, new, tmp_path / "o4", init="zeros")
    (tmp_path / "o5").mkdir()
    (tmp_path / "o5" / "f").write_text("x")
    with pytest.raises(CptError, match="o5 exists and is not empty"):
        resize_model_folder(big, new, tmp_path / "o5")


def test_resize_cli(cpt_cli, tmp_path: Path, toks) -> None:
    base, new = toks
    src = make_tiny_llama(tmp_path / "m", base)
    code, out = cpt_cli("model", "resize", "--model", str(src), "--tokenizer", str(new), "--out", str(tmp_path / "o"))
    assert code == 0, out
    assert "new_rows" in out and (tmp_path / "o" / "model.safetensors").is_file()
    assert (tmp_path / "o" / "tokenizer.model").is_file() and (tmp_path / "o" / "tokenizer.json").is_file()
    code, out = cpt_cli("model", "resize", "--model", str(src), "--tokenizer", str(new), "--out", str(tmp_path / "o"))
    assert code == 1 and "--overwrite" in out
