"""`cpt prepare sft`: conversation formats, templates with exact ids and loss masks on
real tokenizers, cutting at turn boundaries, skipping, bfd packing, `templates --show`."""

import json
from pathlib import Path

import pytest

from cptcore import hookimpl
from cptcore.data.pipeline import PrepareArgs, prepare
from cptcore.data.sft import SkipSample, encode_conversation, normalise
from cptcore.data.tokenize import load_tokenizer
from cptcore.errors import ConfigError, DataError

M = -100
HI_YO = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "Bonjour"},
    {"role": "user", "content": "again"},
    {"role": "assistant", "content": "Salut"},
]
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def template(pm, name):
    spec = pm.registry("templates").get(name)
    return spec, (spec.options() if spec.options else None)


def encode(pm, tok_dir, name, messages, max_length=1000, options=None):
    spec, default = template(pm, name)
    return encode_conversation(load_tokenizer(str(tok_dir)), spec, options or default, messages, max_length)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def run(pm, tok, inputs, out, **kw):
    return prepare(pm, PrepareArgs(kind="sft", tokenizer=str(tok), inputs=tuple(map(str, inputs)), out=str(out), **kw))


def load(out):
    from datasets import load_from_disk

    return load_from_disk(str(out))


def test_four_input_formats_normalise_to_the_same_conversation():
    want = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert normalise({"messages": want}) == want
    assert normalise({"messages": [{"from": "human", "content": "hi"}, {"from": "assistant", "content": "yo"}]}) == want
    assert normalise({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}) == want
    assert normalise({"instruction": "hi", "input": "", "output": "yo"}) == want
    assert normalise({"instruction": "Sum", "input": "1 2", "output": "3"})[0]["content"] == "Sum\n\n1 2"
    sys_first = normalise({"system": "S", "conversations": [{"from": "system", "value": "T"}, {"from": "human", "value": "hi"}]})
    assert sys_first[0] == {"role": "system", "content": "S"} and len(sys_first) == 2
    for bad, reason in [
        ({"text": "x"}, "no conversation"),
        ({"messages": []}, "empty conversation"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "unknown role"),
        ({"messages": [{"role": "user", "content": 3}]}, "not a string"),
    ]:
        with pytest.raises(SkipSample, match=reason):
            normalise(bad)


def test_chatml_exact_ids_and_mask_smollm2(cpt_pm, smollm2_tokenizer_dir):
    ids, labels = encode(cpt_pm, smollm2_tokenizer_dir, "chatml", HI_YO)
    # <|im_start|> user \n hi <|im_end|> \n <|im_start|> assistant \n yo <|im_end|> \n
    assert ids == [1, 4093, 198, 6004, 2, 198, 1, 520, 9531, 198, 31041, 2, 198]
    assert labels == [M, M, M, M, M, M, M, M, M, M, 31041, 2, M]  # assistant content + <|im_end|> only


def test_tokenizer_template_matches_chatml_for_smollm2(cpt_pm, smollm2_tokenizer_dir):
    """SmolLM2's own Jinja template is ChatML with a default system prompt: rendering
    through it and through our chatml must give identical ids and masks."""
    from cptcore.builtin_plugins.chat_templates import TemplateOptions

    own = encode(cpt_pm, smollm2_tokenizer_dir, "tokenizer", TWO_TURNS[1:])
    ours = encode(cpt_pm, smollm2_tokenizer_dir, "chatml", TWO_TURNS[1:], options=TemplateOptions(system=SMOL_SYSTEM))
    assert own == ours
    assert own[0][:2] == [1, 9690]  # <|im_start|> system: the Jinja default system prompt is there


def test_llama3_exact_ids_and_mask(cpt_pm, smollm2_tokenizer_dir, tmp_path):
    """LLaMA-3's header/eot special tokens added to a real byte-level BPE tokenizer."""
    from cptcore.builtin_plugins.chat_templates import TemplateOptions
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir))
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.save_pretrained(tmp_path / "tok")
    ids, labels = encode(cpt_pm, tmp_path / "tok", "llama3", HI_YO, options=TemplateOptions(system="Be brief."))
    B, H, E, T = 49152, 49153, 49154, 49155
    assert ids == [B, H, 9690, E, 198, 198, 6077, 5453, 30, T, H, 4093, E, 198, 198, 6004, T, H, 520, 9531, E, 198, 198, 31041, T]
    assert labels == [M] * 23 + [31041, T]  # "yo" + <|eot_id|>


def test_llama2_multi_turn_with_system_exact_mistral(cpt_pm, mistral_tokenizer_dir):
    ids, labels = encode(cpt_pm, mistral_tokenizer_dir, "llama2", TWO_TURNS)
    tok = load_tokenizer(str(mistral_tokenizer_dir))
    assert tok.convert_ids_to_tokens(ids[19:27]) == ["▁[", "/", "INST", "]", "▁Bon", "jour", "▁", "</s>"]
    assert ids[:4] == [1, 733, 16289, 28793]  # "<s>[INST]": sentencepiece (legacy) prefix space and ids.count(2) == 2 and ids.count(1) == 2
    trained = [(i, x) for i, x in enumerate(labels) if x != M]
    # "▁Bon" starts with the space that belongs to the masked "[/INST] ": offsets overlap
    # the assistant span, so it is trained; the mask is not shifted.
    assert [x for _, x in trained] == [8500, 18777, 28705, 2, 4902, 329, 28705, 2]
    assert [i for i, _ in trained] == [23, 24, 25, 26, 36, 37, 38, 39] and len(ids) == 40


def test_colossal_seed_format_exact_mistral(cpt_pm, mistral_tokenizer_dir):
    from cptcore.builtin_plugins.chat_templates import ColossalOptions

    ids, labels = encode(cpt_pm, mistral_tokenizer_dir, "colossal", TWO_TURNS, options=ColossalOptions(system=""))
    # legacy (sentencepiece-consistent) Mistral tokenizer: text after a special token
    # gets sentencepiece's dummy-prefix "▁" ("<s>" "▁hi"), as in the seed's LLaMA tokenizer
    # <s> ▁Be ▁brief . \n \n H uman : ▁ <s> ▁hi </s> ...: a custom system prompt gets the blank line
    assert ids == [1, 1739, 6817, 28723, 13, 13, 28769, 6366, 28747, 28705, 1, 12014, 2, 21631, 28747, 28705, 1, 8500, 18777, 2,
                   10649, 28747, 28705, 1, 1076, 2, 21631, 28747, 28705, 1, 4902, 329, 2]
    assert [x for x in labels if x != M] == [8500, 18777, 2, 4902, 329, 2]


def test_template_needing_special_tokens_the_tokenizer_lacks_is_refused(cpt_pm, smollm2_tokenizer_dir, mistral_tokenizer_dir):
    with pytest.raises(ConfigError, match="<|eot_id|>"):
        encode(cpt_pm, smollm2_tokenizer_dir, "llama3", HI_YO)
    with pytest.raises(ConfigError, match="im_start"):
        encode(cpt_pm, mistral_tokenizer_dir, "chatml", HI_YO)
    with pytest.raises(ConfigError, match="chat_template"):
        encode(cpt_pm, mistral_tokenizer_dir, "tokenizer", HI_YO)


def test_over_long_conversation_cut_at_turn_boundary_keeping_whole_assistant_turns(cpt_pm, smollm2_tokenizer_dir):
    full_ids, full_labels = encode(cpt_pm, smollm2_tokenizer_dir, "chatml", TWO_TURNS)
    first_ids, first_labels = encode(cpt_pm, smollm2_tokenizer_dir, "chatml", TWO_TURNS[:3])
    assert len(first_ids) < len(full_ids)
    for limit in (len(first_ids), len(full_ids) - 1):
        ids, labels = encode(cpt_pm, smollm2_tokenizer_dir, "chatml", TWO_TURNS, max_length=limit)
        assert (ids, labels) == (first_ids, first_labels)  # the second exchange is dropped whole
    assert encode(cpt_pm, smollm2_tokenizer_dir, "chatml", TWO_TURNS, max_length=len(full_ids)) == (full_ids, full_labels)
    with pytest.raises(SkipSample, match="longer than max_length"):
        encode(cpt_pm, smollm2_tokenizer_dir, "chatml", TWO_TURNS, max_length=len(first_ids) - 1)


def test_prepare_sft_skips_and_counts_samples_without_assistant_tokens(cpt_pm, smollm2_tokenizer_dir, tmp_path):
    src = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"messages": HI_YO},
            {"messages": [{"role": "user", "content": "only a question"}]},
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
            {"instruction": "x " * 300, "output": "y"},
        ],
    )
    m = run(cpt_pm, smollm2_tokenizer_dir, [src], tmp_path / "out", max_length=64)
    assert m["documents"] == {"read": 4, "packed": 2, "skipped": {"longer than max_length": 1, "no assistant turn": 1}, "not_read": 0}
    ds = load(tmp_path / "out")
    assert ds["input_ids"] == [[1, 4093, 198, 6004, 2, 198, 1, 520, 9531, 198, 31041, 2, 198]] * 2
    assert ds["position_ids"][0] == list(range(13))
    assert all(any(x != M for x in row) for row in ds["labels"])  # never an all-masked row
    assert m["template"] == "chatml" and m["packer"] is None


def test_bad_conversation_stops_or_is_skipped(cpt_pm, smollm2_tokenizer_dir, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": HI_YO}, {"messages": [{"role": "wizard", "content": "x"}]}])
    with pytest.raises(DataError, match=r"c.jsonl:2: unknown role 'wizard'"):
        run(cpt_pm, smollm2_tokenizer_dir, [src], tmp_path / "out")
    m = run(cpt_pm, smollm2_tokenizer_dir, [src], tmp_path / "out2", on_error="skip")
    assert m["documents"]["skipped"] == {"unknown role 'wizard'": 1}


def test_sft_bfd_packing_keeps_masks_and_position_boundaries(cpt_pm, smollm2_tokenizer_dir, data_dir, tmp_path):
    src = data_dir / "sft_zh_chatterbot.jsonl"
    plain = run(cpt_pm, smollm2_tokenizer_dir, [src], tmp_path / "plain", max_length=256)
    packed = run(cpt_pm, smollm2_tokenizer_dir, [src], tmp_path / "bfd", max_length=256, packer="bfd", num_proc=2)
    assert packed["tokens"]["out"] == plain["tokens"]["out"] and packed["tokens"]["labels"] == plain["tokens"]["labels"]
    assert packed["packs"] < plain["packs"] / 5 and packed["useful_token_fraction"] > 0.95
    singles = {tuple(r) for r in load(tmp_path / "plain")["input_ids"]}
    ds = load(tmp_path / "bfd")
    for ids, pos, lab in zip(ds["input_ids"], ds["position_ids"], ds["labels"]):
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        for a, b in zip(starts, starts[1:]):
            seg = tuple(ids[a:b])
            assert seg in singles or set(seg) == {packed["pad_id"]}  # every segment is one whole conversation or padding
        assert len(ids) == len(lab) == 256


def test_cli_prepare_sft_and_templates_show(cpt_cli, smollm2_tokenizer_dir, data_dir, tmp_path):
    code, out = cpt_cli(
        "prepare", "sft", "--tokenizer", str(smollm2_tokenizer_dir), "--input", str(data_dir / "sft_en_python_faq.jsonl"),
        "--out", str(tmp_path / "out"), "--max-length", "512", "--template", "chatml", "--no-progress",
    )
    assert code == 0, out
    assert "174 read = 154 packed + 20 skipped" in out
    code, out = cpt_cli("templates", "--show", "chatml")
    assert code == 0
    assert "<|im_start|>assistant\n⟦Paris.<|im_end|>⟧\n" in out and "⟦Rome.<|im_end|>⟧" in out
    assert "What is the capital of France?<|im_end|>" in out and "⟦What" not in out
    code, out = cpt_cli("templates", "--show", "chatml", "--tokenizer", str(smollm2_tokenizer_dir))
    assert code == 0 and "tokens, 6 carry loss" in out
    code, out = cpt_cli("templates", "--show", "chatmll")
    assert code == 1 and "did you mean 'chatml'" in out
    code, out = cpt_cli("templates")
    assert code == 0 and "colossal" in out


class PlainTemplatePlugin:
    """A third-party chat template through `cpt_register_chat_templates`."""

    @hookimpl
    def cpt_register_chat_templates(self):
        from cptcore import ChatTemplate, Segment

        def render(messages, *, tokenizer=None, options=None):
            segs = []
            for m in messages:
                if m["role"] == "assistant":
                    segs += [Segment("A: "), Segment(m["content"] + "</s>", train=True)]
                else:
                    segs.append(Segment(f"Q: {m['content']}\n"))
            return segs

        return [ChatTemplate(name="plain_qa", render=render, description="test template")]


def test_third_party_chat_template_plugin(mistral_tokenizer_dir, tmp_path):
    from cptcore import make_plugin_manager

    pm = make_plugin_manager(entrypoints=False, extra=[PlainTemplatePlugin()])
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": HI_YO}])
    m = run(pm, mistral_tokenizer_dir, [src], tmp_path / "out", template="plain_qa", num_proc=2)
    row = load(tmp_path / "out")[0]
    tok = load_tokenizer(str(mistral_tokenizer_dir))
    assert row["input_ids"] == tok("Q: hi\nA: yo</s>", add_special_tokens=False)["input_ids"]
    assert tok.decode([x for x in row["labels"] if x != M]) == "yo</s>"
    assert m["template"] == "plain_qa"
