"""What `cpt prepare` reports (issue 12): documents and bytes never read with
`--mix downsample`, the ETA of the progress bar, the useful-token fraction of unpadded
rows, chat templates checked against the tokenizer whoever provides them, and
`cpt strategies` showing each strategy's preset."""

import importlib.util
import io
import json
from pathlib import Path

import pytest

from cptcore.data.pipeline import PrepareArgs, prepare
from cptcore.errors import ConfigError, PluginError

ROOT = Path(__file__).resolve().parents[1]
HI_YO = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def run(pm, tok, inputs, out, kind="pretrain", **kw):
    return prepare(pm, PrepareArgs(kind=kind, tokenizer=str(tok), inputs=tuple(map(str, inputs)), out=str(out), **kw))


# --------------------------------------------------------------- --mix downsample (item 9)


def test_fault_downsample_states_documents_and_bytes_never_read(cpt_pm, mistral_tokenizer_dir, data_dir, tmp_path, capsys):
    """Was: 177 of 895 documents read and only `exhausted: False` said so."""
    poetry, docs = data_dir / "zh_poetry_sample.jsonl", data_dir / "en_python_docs_sample.jsonl"
    m = run(cpt_pm, mistral_tokenizer_dir, [f"{poetry}:0.8", f"{docs}:0.2"], tmp_path / "down", max_length=512)
    p, d = m["inputs"]
    assert p["exhausted"] and p["documents"]["not_read"] == 0 and p["bytes"]["not_read"] == 0
    assert p["bytes"]["read"] == poetry.stat().st_size
    lines = docs.read_bytes().splitlines(keepends=True)
    n = d["documents"]["read"]
    assert 0 < n < len(lines) == 32
    assert d["documents"]["not_read"] == len(lines) - n
    assert d["bytes"]["read"] == sum(map(len, lines[:n])) and d["bytes"]["not_read"] == sum(map(len, lines[n:]))
    assert d["files"] == [str(docs)]
    assert m["documents"]["not_read"] == len(lines) - n
    assert m["bytes"] == {"read": poetry.stat().st_size + d["bytes"]["read"], "not_read": d["bytes"]["not_read"]}
    from cptcore.data.stats import print_summary

    print_summary(m, "down")
    assert f"{len(lines) - n} not read (--mix downsample)" in capsys.readouterr().out
    up = run(cpt_pm, mistral_tokenizer_dir, [f"{poetry}:0.8", f"{docs}:0.2"], tmp_path / "up", max_length=512, mix="upsample")
    assert [i["documents"]["not_read"] for i in up["inputs"]] == [0, 0] and up["bytes"]["not_read"] == 0


# ------------------------------------------------------------------- progress ETA (item 7)


def test_progress_shows_an_eta_from_the_input_bytes():
    from rich.console import Console

    from cptcore.data.stats import Progress

    now = [0.0]
    buf = io.StringIO()
    bar = Progress(1000, True, "prepare pretrain", console=Console(file=buf, width=120), clock=lambda: now[0])
    for t in (1.0, 2.0):  # 100 bytes per second
        now[0] = t
        bar.advance(100, 10)
    column = bar._p.columns[-1]
    assert str(column.render(bar._p.tasks[0])) == "0:00:08"  # 800 bytes left at 100 B/s
    bar.close()
    assert buf.getvalue().rstrip().endswith("0.2/1.0 kB 2 docs  10 tok/s ETA 0:00:08")


def test_fault_progress_of_a_gz_input_counts_its_bytes_on_disk(cpt_pm, smollm2_tokenizer_dir, data_dir, tmp_path, monkeypatch):
    """Was: the bar's total was the .gz size on disk but it advanced by decompressed bytes,
    so it ran past 100 % (about 4x for JSONL) and the ETA read 0:00:00 long before the end."""
    import gzip

    from cptcore.data import pipeline, readers
    from cptcore.data.stats import Progress

    raw = (data_dir / "en_python_docs_sample.jsonl").read_bytes()
    gz = tmp_path / "docs.jsonl.gz"
    gz.write_bytes(gzip.compress(raw))
    (tmp_path / "one.txt.gz").write_bytes(gzip.compress(b"a whole text file"))
    (tmp_path / "arr.json.gz").write_bytes(gzip.compress(b'[{"text": "a"}, {"text": "b"}, {"text": "c"}]'))
    for f in (gz, tmp_path / "one.txt.gz", tmp_path / "arr.json.gz"):
        recs = list(readers.iter_file(str(f)))
        size = f.stat().st_size
        assert sum(r.progress_bytes for r in recs) == size - (size % len(recs) if f.suffixes[0] == ".json" else 0)
    assert sum(r.nbytes for r in readers.iter_file(str(gz))) == len(raw)  # the manifest's bytes: decompressed

    seen = {}

    class Recording(Progress):
        def __init__(self, total, *a, **kw):
            super().__init__(total, *a, **kw)
            seen["total"], seen["advanced"] = total, 0

        def advance(self, nbytes, tokens):
            seen["advanced"] += nbytes
            super().advance(nbytes, tokens)

    monkeypatch.setattr(pipeline, "Progress", Recording)
    m = run(cpt_pm, smollm2_tokenizer_dir, [gz], tmp_path / "out", max_length=256, progress=True)
    assert seen == {"total": gz.stat().st_size, "advanced": gz.stat().st_size}
    assert m["bytes"]["read"] == len(raw)


# -------------------------------------------------------------- useful tokens (item 14)


def test_useful_fraction_of_unpadded_rows_is_measured_against_their_own_length(cpt_pm, smollm2_tokenizer_dir, tmp_path, capsys):
    src = tmp_path / "c.jsonl"
    long = [{"role": "user", "content": "tell me more"}, {"role": "assistant", "content": "yes, here is more text"}]
    src.write_text("".join(json.dumps({"messages": c}) + "\n" for c in (HI_YO, long)))
    m = run(cpt_pm, smollm2_tokenizer_dir, [src], tmp_path / "sft", kind="sft", max_length=512)
    from datasets import load_from_disk

    lengths = [len(r) for r in load_from_disk(str(tmp_path / "sft"))["input_ids"]]
    assert m["tokens"]["out"] == sum(lengths) and m["tokens"]["pad"] == 0
    assert m["useful_token_fraction"] == 1.0  # was sum(lengths) / (2 * 512) = 3.6 %
    assert m["longest_pack"] == max(lengths)
    from cptcore.data.stats import print_summary

    print_summary(m, "sft")
    assert f"unpadded rows of ≤ {max(lengths)}" in capsys.readouterr().out.replace("\n", " ")
    text = tmp_path / "t.jsonl"
    text.write_text(json.dumps({"text": "Hello world"}) + "\n")
    kept = run(cpt_pm, smollm2_tokenizer_dir, [text], tmp_path / "keep", max_length=8, packer_options={"last": "keep"})
    assert kept["useful_token_fraction"] == 1.0 and kept["longest_pack"] == 3  # a short last row is not padded


# ----------------------------------------------------- chat templates' special tokens (item 11)


def _zephyr_plugin():
    path = ROOT / "contrib" / "cptcore-example-template" / "cptcore_example_template.py"
    spec = importlib.util.spec_from_file_location("zephyr_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fault_plugin_template_with_a_token_the_tokenizer_lacks_is_refused(smollm2_tokenizer_dir, mistral_tokenizer_dir, tmp_path, cpt_cli):
    """Was: the contrib zephyr template wrote a literal `</s>` that SmolLM2 splits into
    '</', 's', '>' and trained that as the end of turn; the real EOS never trained."""
    from cptcore import make_plugin_manager

    pm = make_plugin_manager(entrypoints=False, extra=[_zephyr_plugin()])
    assert pm.registry("templates").get("zephyr").special_tokens == ("</s>",)
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps({"messages": HI_YO}) + "\n")
    with pytest.raises(ConfigError, match=r"chat template 'zephyr' needs the special token\(s\) </s> \(it would be split into '</', 's', '>'\)"):
        run(pm, smollm2_tokenizer_dir, [src], tmp_path / "smol", kind="sft", template="zephyr")
    assert not (tmp_path / "smol").exists()
    code, out = cpt_cli("templates", "--show", "zephyr", "--tokenizer", str(smollm2_tokenizer_dir), pm=pm)
    assert code == 1 and "error: chat template 'zephyr' needs the special token(s) </s>" in out
    m = run(pm, mistral_tokenizer_dir, [src], tmp_path / "mistral", kind="sft", template="zephyr")
    from datasets import load_from_disk

    labels = [x for x in load_from_disk(str(tmp_path / "mistral"))[0]["labels"] if x != -100]
    assert labels[-1] == 2 and m["template"] == "zephyr"  # "</s>" is Mistral's EOS, one token


def test_builtin_templates_declare_their_special_tokens_and_bad_declarations_are_refused(cpt_pm, smollm2_tokenizer_dir):
    from cptcore import ChatTemplate, Segment
    from cptcore.data.sft import check_template_tokens, encode_conversation
    from cptcore.data.tokenize import load_tokenizer

    registry = cpt_pm.registry("templates")
    assert registry.get("chatml").special_tokens == ("<|im_start|>", "<|im_end|>")
    assert "<|eot_id|>" in registry.get("llama3").special_tokens
    tok = load_tokenizer(str(smollm2_tokenizer_dir))
    check_template_tokens(registry.get("chatml"), tok)  # SmolLM2 has both
    render = lambda messages, **_: [Segment("x<|im_end|>", train=True)]  # noqa: E731
    with pytest.raises(PluginError, match="special_tokens must be a tuple of non-empty strings"):
        check_template_tokens(ChatTemplate("bad", render, special_tokens="<|im_end|>"), tok)
    undeclared = ChatTemplate("mine", render, special_tokens=("<|im_end|>", "<|user|>"))
    with pytest.raises(ConfigError, match=r"'mine' needs the special token\(s\) <\|user\|> "):
        encode_conversation(tok, undeclared, None, HI_YO, 64)  # every encoding path checks


# ----------------------------------------------------------- cpt strategies presets (item 14)


def test_strategies_listing_shows_each_preset_not_the_options_defaults(cpt_cli):
    code, out = cpt_cli("strategies", "--json")
    assert code == 0
    options = {row["name"]: row["options"].split(", ") for row in json.loads(out)}
    assert "stage=1" in options["zero1"] and "stage=2" not in options["zero1"]  # was stage=2
    assert "stage=2" in options["zero2"] and "cpu_offload=False" in options["zero2"]
    assert "cpu_offload=True" in options["zero2_cpu"]  # was cpu_offload=False
    assert "placement_policy='auto'" in options["gemini_auto"]
