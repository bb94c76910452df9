"""User mistakes found by trying the CLI as a new user: each must give one clear line
(naming the file/line or thing), never a traceback, and never lose a document silently."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest

from cptcore.data.readers import InputSpec, iter_file, iter_input, parse_input
from cptcore.errors import ConfigError, CptError, DataError


# ---------------------------------------------------------------- --input PATH[:WEIGHT]
def test_weight_syntax_and_paths_with_colons(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "x:1").write_text("a file whose name ends like a weight")
    (tmp_path / "with:colon").mkdir()
    (tmp_path / "with:colon" / "b.jsonl").write_text('{"text": "b"}\n')
    assert parse_input("x:1") == InputSpec("x:1", None)  # exists as written: literal
    assert parse_input("with:colon/b.jsonl") == InputSpec("with:colon/b.jsonl", None)
    assert parse_input("with:colon/*.jsonl:2") == InputSpec("with:colon/*.jsonl", 2.0)
    assert parse_input("a.jsonl:0.5") == InputSpec("a.jsonl", 0.5)
    for bad, message in [("a.jsonl:abc", "the weight 'abc' is not a number"), ("a.jsonl:", "the weight '' is not a number"),
                         ("*.jsonl:x", "the weight 'x' is not a number"), ("a.jsonl:inf", "positive finite"),
                         ("a.jsonl:nan", "positive finite"), ("a.jsonl:-1", "positive"), ("a.jsonl:0", "positive")]:
        with pytest.raises(DataError, match=message):
            parse_input(bad)


# ---------------------------------------------------------------- empty inputs
@pytest.mark.parametrize("name, content", [
    ("blank.jsonl", b"\n  \n\n"),
    ("bom_only.jsonl", b"\xef\xbb\xbf\n"),
    ("empty_array.json", b"[]"),
    ("empty.jsonl.gz", gzip.compress(b"")),
    ("zero.txt", b""),
])
def test_file_without_records_is_an_empty_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    recs = list(iter_file(str(tmp_path / name)))
    assert [(r.line, r.error) for r in recs] == [(1, "empty file")]


def test_malformed_json_names_the_column(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"text": "ok"}\n{"text": "a" "b"}\n')
    recs = list(iter_input(InputSpec(str(tmp_path / "m.jsonl"))))
    assert [r.error for r in recs] == [None, "malformed JSON (Expecting ',' delimiter at column 14)"]


def test_prepare_blank_file_stops_or_is_counted(cpt_cli, smollm2_tokenizer_dir, tmp_path):
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "hello world"}\n')
    base = ["prepare", "pretrain", "--tokenizer", str(smollm2_tokenizer_dir), "--max-length", "16", "--no-progress"]
    code, out = cpt_cli(*base, "--input", str(good), "--input", str(blank), "--out", str(tmp_path / "a"))
    assert code == 1 and f"error: {blank}:1: empty file" in out and "Traceback" not in out
    code, out = cpt_cli(*base, "--input", str(good), "--input", str(blank), "--out", str(tmp_path / "b"), "--on-error", "skip")
    assert code == 0, out
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["documents"] == {"read": 2, "packed": 1, "skipped": {"empty file": 1}, "not_read": 0}


def test_missing_tokenizer_folder_is_one_line_without_hub_lookup(cpt_cli, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "hello"}\n')
    for tok, message in [(tmp_path / "no" / "such", "no such folder"), (good, "a file, not a tokenizer folder")]:
        code, out = cpt_cli("prepare", "pretrain", "--tokenizer", str(tok), "--input", str(good), "--out", str(tmp_path / "o"))
        assert code == 1 and f"error: --tokenizer {tok}: {message}" in out and "huggingface.co" not in out


# ---------------------------------------------------------------- cpt tokenizer train inputs
def test_tokenizer_train_reads_json_formats_like_prepare(tmp_path):
    from cptcore.tokenizer.train import TrainStats, iter_sentences

    (tmp_path / "a.ndjson").write_text('{"text": "one\\ntwo"}\n\n{"text": ""}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"text": "three"}, {"source": "four ", "target": "five"}]))
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as fh:
        fh.write('{"text": "six"}\n')
    (tmp_path / "d.txt").write_bytes(b"\xef\xbb\xbfseven\n\neight\n")
    stats = TrainStats()
    paths = [tmp_path / n for n in ("a.ndjson", "b.json", "c.jsonl.gz", "d.txt")]
    # before: .ndjson and .json were read as plain-text lines (JSON syntax learnt as text)
    assert list(iter_sentences(paths, "text", 1000, stats)) == ["one", "two", "three", "four five", "six", "seven", "eight"]
    assert stats.skipped_empty == 1


@pytest.mark.parametrize("content, message", [
    (b"", "no text to train on"),
    (b"\n\n", "no text to train on"),
    (b'{"text": "a"}\n{"text": 3}\n', "m.jsonl:2: field 'text' is not a string"),
    (b'{"text": "a"}\n{"text": "b\n', "m.jsonl:2: malformed JSON (Invalid control character at column 12)"),
])
def test_tokenizer_train_bad_input_is_one_line(cpt_cli, tmp_path, content, message):
    (tmp_path / "m.jsonl").write_bytes(content)
    code, out = cpt_cli("tokenizer", "train", "--input", str(tmp_path / "m.jsonl"), "--vocab-size", "50",
                        "--out", str(tmp_path / "sp"))
    assert code == 1 and message in out and "SentencePiece training failed" not in out, out


# ---------------------------------------------------------------- config files
def test_unknown_section_names_the_file(tmp_path):
    from cptcore.config import load_config

    cfg = tmp_path / "run.yaml"
    cfg.write_text("modle: {path: x}\n")
    with pytest.raises(ConfigError, match=rf"^{cfg}: unknown config key 'modle'; did you mean 'model'\?"):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"^--set modle.path=x: unknown config key 'modle'"):
        load_config(None, sets=["modle.path=x"])


# ---------------------------------------------------------------- train / export / generate
def test_fresh_run_refuses_a_folder_holding_another_run(tmp_path):
    from cptcore.train.loop import check_fresh_out

    check_fresh_out(tmp_path / "new")  # missing: fine
    (tmp_path / "out").mkdir()
    check_fresh_out(tmp_path / "out")  # empty: fine
    (tmp_path / "out" / "config.yaml").write_text("{}")
    check_fresh_out(tmp_path / "out")  # no run outputs yet: fine
    (tmp_path / "out" / "checkpoints" / "step-4").mkdir(parents=True)
    (tmp_path / "out" / "checkpoints" / "step-4" / "trainer_state.json").write_text("{}")
    (tmp_path / "out" / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"already holds a run \(summary.json, checkpoints/step-4\): continue it with --resume auto"):
        check_fresh_out(tmp_path / "out")


def test_unreadable_checkpoint_file_is_one_line(tmp_path):
    import torch

    from cptcore.train.checkpoint import unreadable_as_error

    (tmp_path / "lr_scheduler.pt").write_text("garbage\n")
    with pytest.raises(CptError, match=rf"^{tmp_path}: corrupt checkpoint, cannot read it \("):
        with unreadable_as_error(tmp_path):
            torch.load(tmp_path / "lr_scheduler.pt", weights_only=False)


def test_generate_rejects_bad_arguments_and_empty_prompt(tmp_path, smollm2_tokenizer_dir):
    from cptcore.testing import make_tiny_llama
    from cptcore.train.export_cli import generate

    for kwargs, message in [({"max_new_tokens": 0}, "--max-new-tokens must be at least 1"),
                            ({"temperature": -1.0}, "--temperature must be >= 0"),
                            ({"top_p": 0.0}, r"--top-p must be in \(0, 1\]")]:
        with pytest.raises(ConfigError, match=message):
            generate(str(tmp_path / "not-loaded"), ["hi"], **kwargs)
    model = make_tiny_llama(tmp_path / "m", smollm2_tokenizer_dir, hidden_size=16, intermediate_size=32,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(ConfigError, match="--prompt '' encodes to no token"):
        generate(str(model), [""], max_new_tokens=2)
    assert len(generate(str(model), ["hi"], max_new_tokens=2)) == 1


# ---------------------------------------------------------------- --num-proc 2
FORK_SNIPPET = """
from cptcore.data.tokenize import load_tokenizer
from cptcore.data.workers import Executor
import os, sys
tok = load_tokenizer(sys.argv[1])
tok._tokenizer.encode_batch(["some text"] * 64)  # the Rust thread pool is now used
ex = Executor(2, len, ())
assert ex.submit([1, 2, 3]).get() == 3
ex.close()
assert "TOKENIZERS_PARALLELISM" not in os.environ  # restored in the parent
"""


def test_num_proc_workers_fork_without_tokenizers_warning(smollm2_tokenizer_dir):
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    proc = subprocess.run([sys.executable, "-c", FORK_SNIPPET, str(smollm2_tokenizer_dir)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "just got forked" not in proc.stderr


# ---------------------------------------------------------------- SFT rows
@pytest.mark.parametrize("row, reason", [
    ({"system": 5, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     "field 'system' is not a string"),  # was silently dropped
    ({"messages": "not a list"}, "field 'messages' is not a list"),  # was "empty conversation"
    ({"conversations": {"from": "human"}}, "field 'conversations' is not a list"),
    ({"messages": []}, "empty conversation"),
])
def test_sft_row_errors_name_the_field(row, reason):
    from cptcore.data.sft import SkipSample, normalise

    with pytest.raises(SkipSample, match=f"^{reason}$"):
        normalise(row)
    assert normalise({"system": None, "messages": [{"role": "user", "content": "q"}]}) == [{"role": "user", "content": "q"}]


# ---------------------------------------------------------------- cpt tokenizer expand / cpt model resize
def test_expand_empty_token_source_and_eval_text_formats(tmp_path, smollm2_tokenizer_dir):
    from cptcore.tokenizer.expand import expand_tokenizer
    from cptcore.tokenizer.report import read_eval_texts

    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty.txt: no pieces to add"):  # was: an unchanged copy, exit 0
        expand_tokenizer(smollm2_tokenizer_dir, tmp_path / "empty.txt", tmp_path / "out")
    (tmp_path / "e.json").write_text(json.dumps([{"text": "第一条"}, {"text": ""}, {"text": "第二条"}]))
    assert read_eval_texts(tmp_path / "e.json") == ["第一条", "第二条"]  # was: the JSON source as one text
    (tmp_path / "e.jsonl").write_text('{"text": "a"}\n{"text": "b\n')
    with pytest.raises(DataError, match=r"e.jsonl:2: malformed JSON \(Invalid control character at column 12\)"):
        read_eval_texts(tmp_path / "e.jsonl")


def test_resize_missing_tokenizer_is_one_line(cpt_cli, tmp_path, smollm2_tokenizer_dir):
    from cptcore.testing import make_tiny_llama

    model = make_tiny_llama(tmp_path / "m", smollm2_tokenizer_dir, hidden_size=16, intermediate_size=32,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    code, out = cpt_cli("model", "resize", "--model", str(model), "--tokenizer", str(tmp_path / "nope"),
                        "--out", str(tmp_path / "r"))
    assert code == 1 and f"error: no tokenizer in {tmp_path / 'nope'} (no such folder)" in out
    assert "huggingface.co" not in out  # no hub retries


def test_folder_input_includes_gzipped_files(tmp_path):
    from cptcore.data.readers import expand

    (tmp_path / "d").mkdir()
    for name in ("a.jsonl.gz", "b.JSONL", "c.txt.gz", "d.bin.gz", "e.parquet"):
        (tmp_path / "d" / name).write_bytes(b"")
    names = [p.rsplit("/", 1)[1] for p in expand(InputSpec(str(tmp_path / "d")))]
    assert names == ["a.jsonl.gz", "b.JSONL", "c.txt.gz", "e.parquet"]  # .gz files were silently left out


@pytest.mark.parametrize("extra, message", [
    (("--out", "FILE"), "--out FILE exists and is not a folder"),  # was a NotADirectoryError traceback
    (("--shuffle-window", "-3"), "--shuffle-window must be >= 0"),  # was accepted
    (("--num-proc", "0"), "--num-proc must be >= 1, got 0"),
    (("--set", "packer.lst=keep"), "--set packer.lst: unknown option for packer 'splice'"),  # owner was repeated
])
def test_prepare_option_errors(cpt_cli, smollm2_tokenizer_dir, tmp_path, extra, message):
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "hello"}\n')
    extra = tuple(str(good) if x == "FILE" else x for x in extra)
    message = message.replace("FILE", str(good))
    args = ["prepare", "pretrain", "--tokenizer", str(smollm2_tokenizer_dir), "--input", str(good), "--no-progress"]
    if "--out" not in extra:
        args += ["--out", str(tmp_path / "o")]
    code, out = cpt_cli(*args, *extra)
    assert code == 1 and f"error: {message}" in out and "Traceback" not in out, out


def test_train_data_weights(tmp_path, monkeypatch):
    from cptcore.train.data import Source, parse_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run:1").mkdir()
    (tmp_path / "d").mkdir()
    assert parse_source("run:1") == Source(tmp_path.joinpath("run:1").relative_to(tmp_path), 1.0)  # literal folder
    assert parse_source("d:0.25").weight == 0.25
    with pytest.raises(ConfigError, match="the weight 'abc' is not a number"):  # was "d:abc: not found"
        parse_source("d:abc")
    for bad in ("d:inf", "d:nan", "d:0"):
        with pytest.raises(ConfigError, match="must be > 0 and finite"):
            parse_source(bad)


def test_empty_eval_folder_is_refused_before_the_model_loads(tmp_path, smollm2_tokenizer_dir):
    from cptcore.data.manifest import tokenizer_vocab_hash
    from cptcore.data.tokenize import load_tokenizer
    from cptcore.train.data import Source, check_sources

    tok = load_tokenizer(str(smollm2_tokenizer_dir))
    (tmp_path / "e").mkdir()
    manifest = {"format_version": 1, "kind": "pretrain", "packs": 0, "tokenizer": {"vocab_hash": tokenizer_vocab_hash(tok)}}
    (tmp_path / "e" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"e: empty dataset \(0 rows\)"):  # was found only after loading the model
        check_sources([Source(tmp_path / "e", 1.0)], tok)


def test_run_config_records_absolute_input_paths(tmp_path, monkeypatch):
    """The config.yaml in OUT and in every checkpoint named the model and data relative to
    where cpt train ran, so `cpt export CKPT` from another directory said 'model not found'."""
    from cptcore.config import load_config
    from cptcore.train.loop import absolute_inputs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "with:colon").mkdir()
    cfg = load_config(None, overrides={"model.path": "m", "model.tokenizer": "t", "data.train": ["a:0.5", "with:colon", "b"],
                                       "data.eval": ["/abs/e"], "training.out_dir": "runs/x"})
    got = absolute_inputs(cfg)
    assert (got.model.path, got.model.tokenizer) == (f"{tmp_path}/m", f"{tmp_path}/t")
    assert got.data.train == [f"{tmp_path}/a:0.5", f"{tmp_path}/with:colon", f"{tmp_path}/b"]
    assert got.data.eval == {"e": "/abs/e"} and got.training.out_dir == "runs/x"
    assert got.source("model.path") == "command line"


def test_templates_show_tokenizer_template_without_tokenizer_says_what_to_pass(cpt_cli):
    code, out = cpt_cli("templates", "--show", "tokenizer")
    assert code == 1 and "error: chat template 'tokenizer' needs a tokenizer: pass --tokenizer DIR" in out


@pytest.mark.parametrize("content, message", [
    (b"model: {path: a}\ntraining: {max_steps: 2}\nmodel: {path: b}\n", r":3: invalid YAML: key 'model' appears twice"),  # was: last wins
    (b"training:\n  seed: 1\n  seed: 2\n", r":3: invalid YAML: key 'seed' appears twice"),
    (b"model: {path: a}\n\xff\n", r":2: invalid UTF-8"),  # was a UnicodeDecodeError traceback
])
def test_config_file_mistakes_name_the_line(tmp_path, content, message):
    from cptcore.config import load_config

    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(content)
    with pytest.raises(ConfigError, match=f"^{cfg}{message}"):
        load_config(cfg)


def test_sft_turns_cut_to_max_length_are_counted(cpt_cli, smollm2_tokenizer_dir, tmp_path):
    turns = []
    for i in range(6):
        turns += [{"role": "user", "content": f"question number {i} about something"},
                  {"role": "assistant", "content": f"answer number {i} is fairly long text here"}]
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": turns}) + "\n")
    code, out = cpt_cli("prepare", "sft", "--tokenizer", str(smollm2_tokenizer_dir), "--input", str(tmp_path / "c.jsonl"),
                        "--max-length", "64", "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 0, out
    tokens = json.loads((tmp_path / "o" / "manifest.json").read_text())["tokens"]
    assert tokens["out"] == 52 and tokens["truncated"] == 104  # was 0: the cut turns vanished from the counts
    assert tokens["in"] == tokens["out"] + tokens["truncated"] + tokens["skipped"]


def test_folder_input_skips_a_prepared_output_inside_it(tmp_path):
    from cptcore.data.readers import expand

    (tmp_path / "d" / "prep").mkdir(parents=True)
    (tmp_path / "d" / "a.jsonl").write_text('{"text": "a"}\n')
    for name in ("dataset_info.json", "state.json", "manifest.json"):  # `--input d --out d/prep` wrote these
        (tmp_path / "d" / "prep" / name).write_text("{}")
    assert expand(InputSpec(str(tmp_path / "d"))) == [str(tmp_path / "d" / "a.jsonl")]  # were read as documents
    assert expand(InputSpec(str(tmp_path / "d" / "prep"))) == []  # a prepared folder holds no raw documents
