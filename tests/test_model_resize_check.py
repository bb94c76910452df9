"""The safety check after every resize: KL ≈ 0 for new rows the retained text never
uses (real SmolLM2 + Chinese tokens on English), a deliberately broken init (rows ×100)
refused with its number, the report file and the CLI table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cptcore.hookspecs import hookimpl
from cptcore.model.resize_check import CheckOptions, UnsafeResizeError, bits_per_byte
from cptcore.plugins import make_plugin_manager
from cptcore.specs import EmbeddingInitSpec
from cptcore.testing import make_tiny_llama
from cptcore.tokenizer.expand import expand_tokenizer

ZH = Path(__file__).resolve().parents[1] / "cptcore" / "assets" / "data" / "zh_law_heldout.jsonl"


class _Broken:
    """The mean init scaled ×100: a deliberately broken init."""

    @hookimpl
    def cpt_register_embedding_inits(self):
        return [EmbeddingInitSpec(name="mean_x100", init=lambda req: 100 * req.sub_token_mean())]


def test_bits_per_byte_formula():
    assert bits_per_byte(math.log(2) * 80, 10) == pytest.approx(8.0)
    assert bits_per_byte(1.0, 0) is None


@pytest.fixture(scope="module")
def smol_zh_tok(tmp_path_factory, smollm2_tokenizer_dir: Path, zh_sp_model: Path) -> Path:
    out = tmp_path_factory.mktemp("smol_zh_check") / "tok"
    expand_tokenizer(smollm2_tokenizer_dir, zh_sp_model, out)
    return out


@pytest.mark.slow
def test_real_model_kl_zero_for_unused_rows_and_broken_init_flagged(smollm2_dir: Path, smol_zh_tok: Path):
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cptcore.model.resize import resize_embeddings
    from cptcore.model.resize_check import measure_after, measure_before, refuse_if_unsafe

    old_tok, new_tok = AutoTokenizer.from_pretrained(smollm2_dir), AutoTokenizer.from_pretrained(smol_zh_tok)
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, torch_dtype=torch.float32)
    check = CheckOptions(max_tokens=256)
    before = measure_before(base, old_tok, check)
    good = copy.deepcopy(base)
    resize_embeddings(good, old_tok, new_tok, init="mean")
    rep = measure_after(good, old_tok, new_tok, before, check)
    # the Chinese rows are never used on English text: ≈ 0 (measured 2e-4 nats, 0.02 %)
    assert rep["retained"]["ids_changed"] == 0 and rep["positions"] == 256
    assert rep["kl"] == pytest.approx(0.0, abs=1e-3) and rep["new_token_mass"] < 1e-3
    # the old rows' probabilities are the base's times (1 - m): KL = -ln(1 - m) >= m per
    # position, up to the float32 noise of the two forwards (the wider lm_head's matmul rounds
    # differently: KL 4e-7 nats below the mass was seen, 0.15 %; this bound allows 2e-6)
    assert rep["kl"] >= rep["new_token_mass"] - 2e-6, (rep["kl"], rep["new_token_mass"])
    assert rep["safe"] and rep["unsafe"] == []
    broken = copy.deepcopy(base)
    resize_embeddings(broken, old_tok, new_tok, init="mean_x100", pm=make_plugin_manager(extra=[_Broken()]))
    bad = measure_after(broken, old_tok, new_tok, before, check)
    assert bad["kl"] > 1.0 and bad["new_token_mass"] > 0.5 and not bad["safe"]
    with pytest.raises(UnsafeResizeError, match=rf"^unsafe resize: KL\(base \|\| resized\) on retained text is {bad['kl']:.4g} nats/token \(threshold 0.1\)"):
        refuse_if_unsafe(bad, check, Path("r.json"))
    refuse_if_unsafe(bad, CheckOptions(allow_unsafe=True), Path("r.json"))  # overridden: no error


def test_folder_resize_refuses_broken_init_writes_report_and_allows_override(tmp_path: Path, mistral_tokenizer_dir: Path):
    from cptcore.model.resize import resize_model_folder

    extra = tmp_path / "extra.txt"
    extra.write_text("量子\n法律法规\n人民政府\n", encoding="utf-8")
    expand_tokenizer(mistral_tokenizer_dir, extra, tmp_path / "new")
    src = make_tiny_llama(tmp_path / "m", mistral_tokenizer_dir, tie_word_embeddings=False)
    pm = make_plugin_manager(extra=[_Broken()])
    check = CheckOptions(max_tokens=64, domain=ZH, domain_docs=1, domain_chars=50)
    with pytest.raises(UnsafeResizeError, match=r"unsafe resize: KL\(base \|\| resized\) on retained text is [0-9.]+ nats/token \(threshold 0.1\)") as err:
        resize_model_folder(src, tmp_path / "new", tmp_path / "o", init="mean_x100", check=check, pm=pm)
    doc = json.loads((tmp_path / "o" / "resize_report.json").read_text())
    assert doc["unsafe"] and doc["kl"] == err.value.report["kl"] > 0.1 and doc["resize"]["init"] == "mean_x100"
    assert not (tmp_path / "o" / "model.safetensors").exists()  # refused: nothing saved but the report
    d = doc["domain"]
    first = json.loads(Path(ZH).read_text(encoding="utf-8").splitlines()[0])["text"][:50]
    assert d["docs"] == 1 and d["bytes"] == len(first.encode("utf-8")) and d["base_bpb"] > 0 and d["resized_bpb"] > 0
    ok = resize_model_folder(
        src, tmp_path / "new", tmp_path / "o", init="mean_x100", overwrite=True, pm=pm,
        check=CheckOptions(max_tokens=64, allow_unsafe=True),
    )
    assert not ok["check"]["safe"] and (tmp_path / "o" / "model.safetensors").is_file()
    # the same tokenizer again: no new rows, so KL and new-token mass are exactly 0
    same = resize_model_folder(src, mistral_tokenizer_dir, tmp_path / "o2", check=CheckOptions(max_tokens=64))
    assert same["check"]["kl"] == 0.0 and same["check"]["new_token_mass"] == 0.0 and same["check"]["safe"]


def test_cli_prints_check_and_refuses_with_the_number(cpt_cli, tmp_path: Path, mistral_tokenizer_dir: Path):
    extra = tmp_path / "extra.txt"
    extra.write_text("量子\n", encoding="utf-8")
    expand_tokenizer(mistral_tokenizer_dir, extra, tmp_path / "new")
    src = make_tiny_llama(tmp_path / "m", mistral_tokenizer_dir)
    args = ["model", "resize", "--model", str(src), "--tokenizer", str(tmp_path / "new"), "--check-tokens", "32"]
    code, out = cpt_cli(*args, "--out", str(tmp_path / "o"))
    assert code == 0, out
    assert "resize safety check" in out and "retained docs with changed ids" in out and "verdict" in out
    report = json.loads((tmp_path / "o" / "resize_report.json").read_text())
    assert report["positions"] == 32 and report["safe"]
    code, out = cpt_cli(*args, "--out", str(tmp_path / "o2"), "--max-kl", "0")
    assert code == 1 and "unsafe resize: KL(base || resized) on retained text is" in out and "(threshold 0)" in out
    assert "UNSAFE" in out
    code, out = cpt_cli(*args, "--out", str(tmp_path / "o4"), "--init", "mean_x100", pm=make_plugin_manager(extra=[_Broken()]))
    assert code == 1 and "unsafe resize: KL(base || resized)" in out  # the CLI's plugin manager finds plugin inits
    code, out = cpt_cli(*args, "--out", str(tmp_path / "o3"), "--init-option", "scale")
    assert code == 1 and "--init-option expects KEY=VALUE, got 'scale'" in out


def test_check_that_would_measure_nothing_is_refused(cpt_cli, tmp_path: Path, mistral_tokenizer_dir: Path):
    """An empty --retain file or --check-tokens 0 measured no position and said "safe";
    an empty --domain file was a TypeError traceback; --max-kl nan/-1 could never pass:
    each is now one line before any weight is written."""
    extra = tmp_path / "extra.txt"
    extra.write_text("量子\n", encoding="utf-8")
    expand_tokenizer(mistral_tokenizer_dir, extra, tmp_path / "new")
    src = make_tiny_llama(tmp_path / "m", mistral_tokenizer_dir)
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.txt").write_text(" \n\n")
    (tmp_path / "ws.jsonl").write_text('{"text": "   "}\n')
    args = ["model", "resize", "--model", str(src), "--tokenizer", str(tmp_path / "new"), "--check-tokens", "32"]
    cases = [
        (["--retain", str(tmp_path / "empty.jsonl")], f"error: {tmp_path / 'empty.jsonl'}: no text in this file"),
        (["--domain", str(tmp_path / "blank.txt")], f"error: {tmp_path / 'blank.txt'}: no text in this file"),
        (["--domain", str(tmp_path / "ws.jsonl")], f"error: {tmp_path / 'ws.jsonl'}: no text in this file"),
        (["--check-tokens", "0"], "error: --check-tokens must be a positive integer, got 0"),
        (["--max-kl", "-1"], "error: --max-kl must be a finite number >= 0 (nats/token), got -1.0"),
        (["--init", "noisy_mean", "--init-option", "scale=inf"], "scale must be a finite number >= 0, got inf"),
    ]
    for i, (extra_args, message) in enumerate(cases):
        out_dir = tmp_path / f"o{i}"
        code, out = cpt_cli(*args, *extra_args, "--out", str(out_dir))
        assert code == 1 and message in out and "Traceback" not in out, (extra_args, out)
        assert not (out_dir / "model.safetensors").exists()
    # nan is a usage error before the command runs (cptcore.cli.numbers.finite); the
    # library's own check (CheckOptions) keeps its message for callers
    code, out = cpt_cli(*args, "--max-kl", "nan", "--out", str(tmp_path / "nan"))
    assert code == 2 and "Invalid value for '--max-kl'" in out and "finite" in out, out
    assert not (tmp_path / "nan").exists()
