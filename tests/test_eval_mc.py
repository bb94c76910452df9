"""Multiple-choice evaluation (MMLU sample bundled in tests/data/mc) and `cpt eval`."""

from __future__ import annotations

import json

import pytest
import torch

from cptcore.errors import DataError
from train_support import DATA, tiny_model

MC = DATA / "mc"


class Biased(torch.nn.Module):
    """A causal LM whose logits get +1000 on ``token_ids`` at every position: it
    prefers those tokens whatever the input."""

    def __init__(self, model, token_ids):
        super().__init__()
        self.model = model
        self.token_ids = list(token_ids)

    def forward(self, **kw):
        out = self.model(**kw)
        out.logits[..., self.token_ids] += 1000.0
        return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tiny_model(tmp_path_factory.mktemp("mc") / "model", smollm2_tokenizer_dir)
    return AutoModelForCausalLM.from_pretrained(str(d)).eval(), AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir)), d


def test_three_item_forms_parse_to_the_same_item():
    from cptcore.eval.mc import Item, parse_item

    want = Item("Which is a planet?", ("Sun", "Mars", "Moon"), 1, "astronomy")
    assert parse_item({"question": "Which is a planet?", "choices": ["Sun", "Mars", "Moon"], "answer": "B",
                       "subject": "astronomy"}, "x") == want
    assert parse_item({"question": "Which is a planet?\nA. Sun\nB) Mars\nC、Moon", "answer": "b", "subject": "astronomy"}, "x") == want
    assert parse_item({"question": "Which is a planet?", "A": "Sun", "B": "Mars", "C": "Moon", "answer": 1,
                       "subject": "astronomy"}, "x") == want
    assert parse_item({"question": "Which is a planet?", "choices": ["Sun", "Mars", "Moon"], "answer": "Mars",
                       "subject": "astronomy"}, "x") == want
    with pytest.raises(DataError, match="answer 'E'"):
        parse_item({"question": "q", "choices": ["a", "b"], "answer": "E"}, "f.jsonl:3")
    with pytest.raises(DataError, match="no 'choices'"):
        parse_item({"question": "q", "answer": "A"}, "f.jsonl:3")


def test_bad_line_names_file_and_line(tmp_path):
    from cptcore.eval.mc import read_items

    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "q", "choices": ["a", "b"], "answer": "A"}\n{"question": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        read_items(p)


def test_bundled_sample_and_in_question_form_agree():
    from cptcore.eval.mc import read_items

    test, inq, dev = read_items(MC / "mmlu_sample_test.jsonl"), read_items(MC / "mmlu_sample_inquestion.jsonl"), read_items(MC / "mmlu_sample_dev.jsonl")
    assert len(test) == 40 and len(dev) == 20 and inq == test[:8]
    assert {i.subject for i in test} == {"high school geography", "astronomy", "world religions", "computer security"}


def test_k_shot_prompt_is_the_mmlu_format():
    from cptcore.eval.mc import Item, build_prompt, pick_shots

    dev = [Item("1+1?", ("1", "2"), 1, "math"), Item("Red?", ("yes", "no"), 0, "colour"), Item("2+2?", ("4", "5"), 0, "math")]
    item = Item("3+3?", ("6", "7"), 0, "math")
    shots = pick_shots(item, dev, 1)
    assert shots == [dev[0]]
    assert build_prompt(item, shots) == (
        "The following are multiple choice questions (with answers) about math.\n\n"
        "1+1?\nA. 1\nB. 2\nAnswer: B\n\n"
        "3+3?\nA. 6\nB. 7\nAnswer:")
    assert pick_shots(Item("q", ("a", "b"), 0, "history"), dev, 2) == dev[:2]  # no history in dev: any subject


def test_letter_score_follows_a_model_forced_to_answer_b(tiny):
    from cptcore.eval.mc import evaluate_mc, read_items

    model, tok, _ = tiny
    items = read_items(MC / "mmlu_sample_test.jsonl")
    b = tok(" B", add_special_tokens=False)["input_ids"]
    assert len(b) == 1
    r = evaluate_mc(Biased(model, b), tok, items, read_items(MC / "mmlu_sample_dev.jsonl"), k_shot=1, loglik=False)
    assert set(r.accuracy) == {"letter"}
    assert r.predictions["letter"] == [1] * 40
    assert r.accuracy["letter"] == sum(i.answer == 1 for i in items) / 40 == 12 / 40
    for subject, acc in r.by_subject.items():
        sub = [i for i in items if i.subject == subject]
        assert acc["letter"] == sum(i.answer == 1 for i in sub) / len(sub)


def test_loglik_score_follows_a_model_forced_to_one_choice_text(tiny):
    from cptcore.eval.mc import Item, evaluate_mc

    model, tok, _ = tiny
    zebra = tok(" zebra", add_special_tokens=False)["input_ids"]
    items = [Item("Which animal is striped?", ("red", "green", "zebra", "blue"), 2, "animals"),
             Item("Which is a colour?", ("zebra", "red", "cat", "dog"), 1, "colours"),
             Item("Pick one.", ("blue", "cat", "dog", "zebra"), 3, "animals")]
    r = evaluate_mc(Biased(model, zebra), tok, items)
    assert r.predictions["loglik"] == [2, 0, 3] and r.predictions["loglik_norm"] == [2, 0, 3]
    assert r.accuracy["loglik"] == pytest.approx(2 / 3)
    assert r.by_subject == {"animals": pytest.approx({"letter": r.by_subject["animals"]["letter"], "loglik": 1.0, "loglik_norm": 1.0}),
                            "colours": pytest.approx({"letter": r.by_subject["colours"]["letter"], "loglik": 0.0, "loglik_norm": 0.0})}


def test_cli_eval_two_tokenizers_text_and_mc(tmp_path, cpt_cli, smollm2_tokenizer_dir, mistral_tokenizer_dir):
    """Two models with different vocabularies on the same raw text (each with its own
    tokenizer) and an MC set; the JSON matches the library functions."""
    from transformers import AutoModelForCausalLM

    from cptcore.eval.text import encode_documents, score_documents

    m1 = tiny_model(tmp_path / "smol", smollm2_tokenizer_dir)
    m2 = tiny_model(tmp_path / "mistral", mistral_tokenizer_dir)
    text = tmp_path / "t.jsonl"
    text.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                            for t in ["Hello world, 世界.", "A second document that is a bit longer than the first one."]))
    out = tmp_path / "r.json"
    code, log = cpt_cli("eval", "--model", str(m1), "--model", str(m2), "--text", f"mixed={text}",
                        "--mc", f"mmlu={MC / 'mmlu_sample_inquestion.jsonl'}", "--mc-dev", f"mmlu={MC / 'mmlu_sample_dev.jsonl'}",
                        "--k-shot", "1", "--max-length", "8", "--stride", "4", "--json", str(out))
    assert code == 0, log
    res = json.loads(out.read_text())
    assert list(res["models"]) == [str(m1), str(m2)] and (res["max_length"], res["stride"], res["k_shot"]) == (8, 4, 1)
    assert res["models"][str(m1)]["vocab_size"] == 49152 and res["models"][str(m2)]["vocab_size"] == 32000
    for m, tokdir in ((m1, smollm2_tokenizer_dir), (m2, mistral_tokenizer_dir)):
        r = res["models"][str(m)]["text"]["mixed"]
        assert r["windowed_documents"] >= 1
        ids, nb = encode_documents(str(m), [json.loads(x)["text"] for x in text.read_text().splitlines()])
        lib = score_documents(AutoModelForCausalLM.from_pretrained(str(m)).eval(), ids, nb, max_length=8, stride=4)
        assert r["bpb"] == pytest.approx(lib.bpb, rel=1e-5) and r["tokens"] == lib.tokens
        assert res["models"][str(m)]["mc"]["mmlu"]["items"] == 8
    assert "bits per byte" in log and "mixed" in log
    # --full-text: every byte of the text is scored, whatever the tokenizer
    code, log = cpt_cli("eval", "--model", str(m1), "--model", str(m2), "--text", f"mixed={text}", "--full-text",
                        "--max-length", "8", "--stride", "4", "--json", str(out))
    assert code == 0, log
    res = json.loads(out.read_text())
    total = sum(len(json.loads(x)["text"].encode()) for x in text.read_text().splitlines())
    assert [res["models"][str(m)]["text"]["mixed"]["bytes"] for m in (m1, m2)] == [total, total]


def test_cli_eval_errors_are_one_line(cpt_cli, tmp_path):
    code, log = cpt_cli("eval", "--model", str(tmp_path / "nope"), "--text", f"x={tmp_path / 'a.jsonl'}")
    assert code == 1 and "nope" in log and "Traceback" not in log
    code, log = cpt_cli("eval", "--model", str(tmp_path), "--mc", "a=x.jsonl", "--mc-dev", "b=y.jsonl")
    assert code == 1 and "--mc-dev b: no --mc set named 'b'" in log
