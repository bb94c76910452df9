"""`cpt prepare pretrain` end to end on real tokenizers (Mistral v1 SentencePiece,
SmolLM2 byte-level BPE) and bundled real text."""

import json
from pathlib import Path

import numpy as np
import pytest

from cptcore import hookimpl
from cptcore.data.manifest import read_manifest, tokenizer_vocab_hash
from cptcore.data.pipeline import PrepareArgs, prepare
from cptcore.errors import ConfigError, DataError

SMOL_EOS = 2  # <|im_end|>, which is also SmolLM2's pad token upstream


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def run(pm, tok, inputs, out, **kw):
    args = PrepareArgs(kind="pretrain", tokenizer=str(tok), inputs=tuple(str(i) for i in inputs), out=str(out), **kw)
    return prepare(pm, args)


def load(out):
    from datasets import load_from_disk

    return load_from_disk(str(out))


def real_stream(ds):
    """Concatenation of all rows' non-pad tokens (pad = labels -100 at the row's tail)."""
    parts = []
    for ids, lab in zip(ds["input_ids"], ds["labels"]):
        n = len(ids)
        while n and lab[n - 1] == -100:
            n -= 1
        parts.extend(ids[:n])
    return parts


def test_exact_ids_mistral_bos_eos_and_row_schema(cpt_pm, mistral_tokenizer_dir, mistral_sp_model, tmp_path):
    import sentencepiece as spm

    texts = ["Hello world", "Hello world\nsecond line"]
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts])
    m = run(cpt_pm, mistral_tokenizer_dir, [src], tmp_path / "out", max_length=8)
    ds = load(tmp_path / "out")
    # Mistral adds BOS (1) itself; EOS (2) is added between documents although it does not.
    assert ds["input_ids"] == [[1, 22557, 1526, 2, 1, 22557, 1526, 13], [6562, 1407, 2, 0, 0, 0, 0, 0]]
    assert ds["labels"] == [[1, 22557, 1526, 2, 1, 22557, 1526, 13], [6562, 1407, 2, -100, -100, -100, -100, -100]]
    assert ds["position_ids"] == [[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 0, 1, 2, 3, 4]]
    sp = spm.SentencePieceProcessor(model_file=str(mistral_sp_model))
    assert real_stream(ds) == [x for t in texts for x in [1, *sp.encode(t), 2]]
    assert ds.features["input_ids"].feature.dtype == "int32"
    assert m["pad_id"] == 0 and m["tokenizer"]["bos_id"] == 1 and m["tokenizer"]["eos_id"] == 2
    assert m["tokens"] == {"in": 11, "out": 11, "pad": 5, "truncated": 0, "skipped": 0, "labels": 11, "dropped": 0}
    assert m["packs"] == 2 and m["useful_token_fraction"] == 11 / 16
    m2 = run(cpt_pm, mistral_tokenizer_dir, [src], tmp_path / "nobos", max_length=8, add_bos=False, add_eos=False)
    assert load(tmp_path / "nobos")["input_ids"][0][:4] == [22557, 1526, 22557, 1526]
    assert m2["tokenizer"]["bos_id"] is None and m2["tokenizer"]["eos_id"] is None


def test_splice_concatenation_equals_tokenized_documents_on_real_text(cpt_pm, smollm2_tokenizer_dir, data_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir))
    inputs = [data_dir / "zh_poetry_sample.jsonl", data_dir / "en_python_docs_sample.jsonl"]
    m = run(cpt_pm, smollm2_tokenizer_dir, inputs, tmp_path / "out", max_length=512, num_shards=3)
    ds = load(tmp_path / "out")
    expected = []
    for path in inputs:
        for line in path.read_text(encoding="utf-8").splitlines():
            expected.extend(tok(json.loads(line)["text"])["input_ids"] + [SMOL_EOS])  # no BOS for SmolLM2
    assert real_stream(ds) == expected
    assert all(len(r) == 512 for r in ds["input_ids"])
    assert m["num_shards"] == 3 and len(list((tmp_path / "out").glob("data-*.arrow"))) == 3
    assert m["tokens"]["in"] == m["tokens"]["out"] == len(expected)
    assert m["useful_token_fraction"] > 0.99
    d = m["documents"]
    assert d["read"] == d["packed"] == 467 + 32 and d["skipped"] == {}


def test_fault_pad_token_equal_to_eos_never_masks_real_eos(cpt_pm, smollm2_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir))
    assert tok.pad_token_id == tok.eos_token_id == SMOL_EOS  # the trap
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "Hello world"}, {"text": "hello world"}])
    m = run(cpt_pm, smollm2_tokenizer_dir, [src], tmp_path / "out", max_length=8)
    assert m["pad_id"] == tok.unk_token_id == 0 != SMOL_EOS
    row = load(tmp_path / "out")[0]
    assert row["input_ids"] == [19556, 905, 2, 28120, 905, 2, 0, 0]
    assert row["labels"] == [19556, 905, 2, 28120, 905, 2, -100, -100]  # both EOS trained


def test_fault_llama3_style_tokenizer_gets_end_of_text_between_documents(cpt_pm, smollm2_tokenizer_dir, tmp_path):
    """SmolLM2 (like LLaMA-3) adds no EOS when encoding; packed documents must still be
    separated by one, or the model learns to run documents together."""
    from cptcore.data.tokenize import load_tokenizer, tokenizer_adds

    assert tokenizer_adds(load_tokenizer(str(smollm2_tokenizer_dir))) == (False, False)
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "Hello world"}] * 3)
    run(cpt_pm, smollm2_tokenizer_dir, [src], tmp_path / "out", max_length=16)
    assert real_stream(load(tmp_path / "out")) == [19556, 905, 2] * 3
    run(cpt_pm, smollm2_tokenizer_dir, [src], tmp_path / "off", max_length=16, add_eos=False)
    assert real_stream(load(tmp_path / "off")) == [19556, 905] * 3


def test_fault_source_target_boundary_merging_into_one_token(cpt_pm, smollm2_tokenizer_dir, tmp_path):
    """The seed tokenized source and target apart (or masked len(tokenize(source))
    tokens); when the boundary falls inside a token the mask shifts. Masks come from
    character offsets of one tokenization of source+target."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir))
    assert tok("hel")["input_ids"] == [2797] and tok("hello world")["input_ids"] == [28120, 905]
    src = write_jsonl(
        tmp_path / "seed.jsonl",
        [
            {"source": "hel", "target": "lo world", "category": "x"},
            {"source": "Question: 2+2=", "target": "4", "category": "math"},
        ],
    )
    run(cpt_pm, smollm2_tokenizer_dir, [src], tmp_path / "out", max_length=32, packer="greedy")
    row = load(tmp_path / "out")[0]
    assert row["input_ids"][:14] == [28120, 905, 2, 17872, 42, 216, 34, 27, 34, 45, 36, 2, 0, 0]
    # "hello" straddles the boundary: trained (it produces target characters), not shifted.
    assert row["labels"][:14] == [28120, 905, 2, -100, -100, -100, -100, -100, -100, -100, 36, 2, -100, -100]
    assert row["position_ids"][:14] == [0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1]


def test_fault_epoch_length_is_the_number_of_packed_rows(cpt_pm, mistral_tokenizer_dir, data_dir, tmp_path):
    """The seed computed epoch length from the raw sample count; the manifest's `packs`
    is the number of rows training iterates, and differs from the document count."""
    m = run(cpt_pm, mistral_tokenizer_dir, [data_dir / "zh_poetry_sample.jsonl"], tmp_path / "out", max_length=1024)
    ds = load(tmp_path / "out")
    assert m["packs"] == len(ds) == read_manifest(tmp_path / "out")["packs"]
    assert m["documents"]["read"] == 467 != len(ds)
    assert m["packs"] == -(-m["tokens"]["out"] // 1024)


def test_manifest_schema(cpt_pm, mistral_tokenizer_dir, smollm2_tokenizer_dir, data_dir, tmp_path):
    from cptcore import __version__
    from cptcore.data.tokenize import load_tokenizer

    m = run(cpt_pm, mistral_tokenizer_dir, [data_dir / "zh_poetry_sample.jsonl"], tmp_path / "out", max_length=256, command="cpt prepare pretrain x")
    on_disk = read_manifest(tmp_path / "out")
    assert on_disk == json.loads(json.dumps(m))
    for key in ("tokenizer", "max_length", "packer", "inputs", "documents", "tokens", "packs", "useful_token_fraction", "command", "cptcore_version", "pad_id"):
        assert key in on_disk
    assert on_disk["cptcore_version"] == __version__ and on_disk["command"] == "cpt prepare pretrain x"
    mis, smol = load_tokenizer(str(mistral_tokenizer_dir)), load_tokenizer(str(smollm2_tokenizer_dir))
    assert on_disk["tokenizer"]["vocab_hash"] == tokenizer_vocab_hash(mis) != tokenizer_vocab_hash(smol)
    inp = on_disk["inputs"][0]
    assert inp["documents"] == {"read": 467, "packed": 467, "skipped": {}, "not_read": 0} and inp["achieved_proportion"] == 1.0
    with pytest.raises(DataError, match="no manifest.json"):
        read_manifest(tmp_path)


BAD_LINES = [
    (b'{"text": "good one"}\n', None),
    (b'{"text": "oops"\n', "malformed JSON"),
    (b'{"text": "caf\xe9"}\n', "invalid UTF-8"),
    (b'{"body": "no text field"}\n', "missing field 'text'"),
    (b'{"text": 42}\n', "field 'text' is not a string"),
    (b'{"text": "  \\n "}\n', "empty document"),
    (b'["a list"]\n', "not a JSON object"),
    (b'{"text": "good two"}\n', None),
]


@pytest.mark.parametrize("index", [i for i, (_, r) in enumerate(BAD_LINES) if r])
def test_bad_input_stops_naming_file_and_line(cpt_pm, mistral_tokenizer_dir, tmp_path, index):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(BAD_LINES[0][0] + BAD_LINES[index][0])
    with pytest.raises(DataError) as err:
        run(cpt_pm, mistral_tokenizer_dir, [path], tmp_path / "out", max_length=16)
    assert str(err.value).startswith(f"{path}:2: {BAD_LINES[index][1]}")
    assert "--on-error skip" in str(err.value)
    assert not list(tmp_path.glob(".out.rows.arrow"))  # temporary file cleaned up


def test_bad_input_skipped_and_counted_read_equals_packed_plus_skipped(cpt_pm, mistral_tokenizer_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"".join(line for line, _ in BAD_LINES))
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    m = run(cpt_pm, mistral_tokenizer_dir, [bad, empty, tmp_path / "missing*.jsonl"], tmp_path / "out", max_length=16, on_error="skip")
    skipped = {
        "malformed JSON": 1, "invalid UTF-8": 1, "missing field 'text'": 1, "field 'text' is not a string": 1,
        "empty document": 1, "not a JSON object": 1,
    }
    assert m["inputs"][0]["documents"] == {"read": 8, "packed": 2, "skipped": skipped, "not_read": 0}
    assert m["inputs"][1]["documents"]["skipped"] == {"empty file": 1}
    assert m["inputs"][2]["documents"]["skipped"] == {"missing file": 1}
    d = m["documents"]
    assert d["read"] == d["packed"] + sum(d["skipped"].values()) == 10
    assert real_stream(load(tmp_path / "out")) == [1, 1179, 624, 2, 1, 1179, 989, 2]
    with pytest.raises(DataError, match="missing file"):
        run(cpt_pm, mistral_tokenizer_dir, [tmp_path / "nope.jsonl"], tmp_path / "o2")


def test_identical_inputs_and_seed_give_byte_identical_shards_also_in_parallel(cpt_pm, mistral_tokenizer_dir, data_dir, tmp_path):
    inputs = [data_dir / "en_python_docs_sample.jsonl", data_dir / "zh_poetry_sample.jsonl"]
    kw = dict(max_length=256, num_shards=2, shuffle_window=64, seed=3)
    run(cpt_pm, mistral_tokenizer_dir, inputs, tmp_path / "a", **kw)
    run(cpt_pm, mistral_tokenizer_dir, inputs, tmp_path / "b", num_proc=2, **kw)
    run(cpt_pm, mistral_tokenizer_dir, inputs, tmp_path / "c", **{**kw, "seed": 4})
    for name in ("data-00000-of-00002.arrow", "data-00001-of-00002.arrow"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "data-00000-of-00002.arrow").read_bytes() != (tmp_path / "c" / "data-00000-of-00002.arrow").read_bytes()
    a, c = load(tmp_path / "a"), load(tmp_path / "c")
    assert sorted(map(tuple, a["input_ids"])) == sorted(map(tuple, c["input_ids"]))  # same rows, other order


def test_weights_set_token_proportions(cpt_pm, mistral_tokenizer_dir, data_dir, tmp_path):
    poetry, docs = data_dir / "zh_poetry_sample.jsonl", data_dir / "en_python_docs_sample.jsonl"
    m = run(cpt_pm, mistral_tokenizer_dir, [f"{poetry}:0.8", f"{docs}:0.2"], tmp_path / "down", max_length=512)
    p, d = m["inputs"]
    assert p["target_proportion"] == pytest.approx(0.8) and d["target_proportion"] == pytest.approx(0.2)
    assert p["exhausted"] and not d["exhausted"]  # poetry ran out first; docs downsampled
    # within one document of the target (a Python docs page is up to ~6k tokens of ~85k)
    assert abs(p["achieved_proportion"] - 0.8) < 0.05
    assert d["documents"]["read"] < 32
    m = run(cpt_pm, mistral_tokenizer_dir, [f"{poetry}:0.8", f"{docs}:0.2"], tmp_path / "up", max_length=512, mix="upsample")
    p, d = m["inputs"]
    assert p["epochs"] > 1 and d["epochs"] == 1 and d["documents"]["read"] == 32
    assert abs(p["achieved_proportion"] - 0.8) < 0.01
    with pytest.raises(ConfigError, match="every --input"):
        run(cpt_pm, mistral_tokenizer_dir, [f"{poetry}:0.8", docs], tmp_path / "x")


def test_long_document_policies_are_counted(cpt_pm, mistral_tokenizer_dir, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "one two three four five six seven eight nine ten"}, {"text": "Hello world"}])
    full = run(cpt_pm, mistral_tokenizer_dir, [src], tmp_path / "split", max_length=8, packer="greedy")
    long_len = full["tokens"]["in"] - 4
    assert full["tokens"]["truncated"] == 0 and full["tokens"]["out"] == full["tokens"]["in"]
    ds = load(tmp_path / "split")  # 12-token document split into 8 + 4, then the short one
    assert ds["input_ids"] == [[1, 624, 989, 1712, 2308, 3359, 3522, 6671], [5435, 9542, 3095, 2, 1, 22557, 1526, 2]]
    assert ds["position_ids"][1] == [0, 1, 2, 3, 0, 1, 2, 3]
    trunc = run(cpt_pm, mistral_tokenizer_dir, [src], tmp_path / "trunc", max_length=8, packer="greedy", long_doc="truncate")
    assert trunc["tokens"]["truncated"] == long_len - 8 and trunc["documents"]["packed"] == 2
    skip = run(cpt_pm, mistral_tokenizer_dir, [src], tmp_path / "skip", max_length=8, packer="greedy", long_doc="skip")
    assert skip["documents"]["skipped"] == {"longer than max_length": 1} and skip["tokens"]["skipped"] == long_len
    assert load(tmp_path / "skip")["input_ids"] == [[1, 22557, 1526, 2, 0, 0, 0, 0]]


def test_json_parquet_text_globs_and_text_field(cpt_pm, mistral_tokenizer_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.json").write_text(json.dumps([{"body": "Hello world"}, {"body": "Hello world"}]))
    pq.write_table(pa.table({"body": ["Hello world"]}), tmp_path / "in" / "b.parquet")
    write_jsonl(tmp_path / "in" / "c.jsonl", [{"body": "Hello world"}])
    m = run(cpt_pm, mistral_tokenizer_dir, [tmp_path / "in" / "*"], tmp_path / "out", max_length=64, text_field="body")
    assert m["documents"]["packed"] == 4 and len(m["inputs"][0]["files"]) == 3
    (tmp_path / "t.txt").write_text("Hello world", encoding="utf-8")
    run(cpt_pm, mistral_tokenizer_dir, [tmp_path / "t.txt"], tmp_path / "txt", max_length=8)
    assert load(tmp_path / "txt")["input_ids"] == [[1, 22557, 1526, 2, 0, 0, 0, 0]]


def char_ids(texts):
    return [[ord(c) for c in t] for t in texts]


class CharTokenizerPlugin:
    @hookimpl
    def cpt_tokenize_fn(self, tokenizer_path, add_bos, add_eos):
        return char_ids


def test_plugin_tokenize_fn_overrides_the_builtin(mistral_tokenizer_dir, tmp_path):
    from cptcore import make_plugin_manager

    pm = make_plugin_manager(entrypoints=False, extra=[CharTokenizerPlugin()])
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "abc"}])
    run(pm, mistral_tokenizer_dir, [src], tmp_path / "out", max_length=4)
    assert load(tmp_path / "out")["input_ids"] == [[97, 98, 99, 0]]


def test_cli_prepare_pretrain_summary_and_one_line_errors(cpt_cli, mistral_tokenizer_dir, data_dir, tmp_path):
    code, out = cpt_cli(
        "prepare", "pretrain", "--tokenizer", str(mistral_tokenizer_dir), "--input", str(data_dir / "zh_poetry_sample.jsonl"),
        "--out", str(tmp_path / "out"), "--max-length", "512", "--no-progress",
    )
    assert code == 0, out
    assert "467 read = 467 packed + 0 skipped" in out
    assert read_manifest(tmp_path / "out")["command"].startswith("cpt ")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n{oops\n')
    code, out = cpt_cli("prepare", "pretrain", "--tokenizer", str(mistral_tokenizer_dir), "--input", str(bad), "--out", str(tmp_path / "o2"), "--no-progress")
    assert code == 1 and f"error: {bad}:2: malformed JSON" in out
    code, out = cpt_cli("prepare", "pretrain", "--tokenizer", str(mistral_tokenizer_dir), "--input", str(bad), "--out", str(tmp_path / "o3"), "--packer", "splcie")
    assert code == 1 and "did you mean 'splice'" in out
    code, out = cpt_cli("prepare", "pretrain", "--tokenizer", str(mistral_tokenizer_dir), "--input", str(bad), "--out", str(tmp_path / "out"))
    assert code == 1 and "--overwrite" in out


class OneDocPerRowPlugin:
    """A third-party packer through `cpt_register_packers`: one padded row per document."""

    @hookimpl
    def cpt_register_packers(self):
        from cptcore import PackerSpec
        from cptcore.data.packing import build_row

        class OnePerRow:
            def __init__(self, max_length, pad_id, options):
                self.max_length, self.pad_id = max_length, pad_id

            def add(self, doc):
                return [build_row([doc], self.max_length, self.pad_id)]

            def flush(self):
                return []

        return [PackerSpec(name="one_per_row", make=OnePerRow, description="test packer")]


def test_third_party_packer_plugin_is_selectable(mistral_tokenizer_dir, tmp_path):
    from cptcore import make_plugin_manager

    pm = make_plugin_manager(entrypoints=False, extra=[OneDocPerRowPlugin()])
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "Hello world"}] * 2)
    m = run(pm, mistral_tokenizer_dir, [src], tmp_path / "out", max_length=6, packer="one_per_row")
    assert load(tmp_path / "out")["input_ids"] == [[1, 22557, 1526, 2, 0, 0]] * 2
    assert m["packer"] == "one_per_row" and m["useful_token_fraction"] == 8 / 12


def test_truncate_keeps_the_end_of_text_token(cpt_pm, mistral_tokenizer_dir, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "one two three four five six seven eight nine ten"}])
    run(cpt_pm, mistral_tokenizer_dir, [src], tmp_path / "out", max_length=8, packer="greedy", long_doc="truncate")
    assert load(tmp_path / "out")["input_ids"] == [[1, 624, 989, 1712, 2308, 3359, 3522, 2]]


def bad_ids(texts):
    return [[10**9] for _ in texts]


class BadTokenizerPlugin:
    @hookimpl
    def cpt_tokenize_fn(self, tokenizer_path, add_bos, add_eos):
        return bad_ids


def test_plugin_ids_outside_the_vocabulary_are_refused(mistral_tokenizer_dir, tmp_path):
    from cptcore import make_plugin_manager

    pm = make_plugin_manager(entrypoints=False, extra=[BadTokenizerPlugin()])
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "abc"}])
    with pytest.raises(DataError, match=r"a.jsonl:1: token id 1000000000 outside the vocabulary \(size 32000\)"):
        run(pm, mistral_tokenizer_dir, [src], tmp_path / "out")


def test_reading_is_lazy_and_bounded(mistral_tokenizer_dir):
    """Only a bounded look-ahead of records is read before rows come out."""
    from cptcore.data.readers import Record
    import functools

    from cptcore.data.tokenize import encode_texts
    from cptcore.data.workers import ChunkStream, Executor, pretrain_chunk

    pulled = []

    def records():
        for i in range(10**9):  # "infinite" corpus
            pulled.append(i)
            yield Record("x", i + 1, text="Hello world", nbytes=12)

    fn = functools.partial(encode_texts, str(mistral_tokenizer_dir), None, None)
    ex = Executor(1, pretrain_chunk, (fn, str(mistral_tokenizer_dir), None, None))
    try:
        stream = iter(ChunkStream(records(), lambda r: ("text", r.text), ex, chunk_records=100))
        first = next(stream)
        assert first[2].tolist() == [1, 22557, 1526, 2]
        assert len(pulled) <= 2 * 100  # look-ahead of 2 chunks of 100 records (num_proc=1)
    finally:
        ex.close()


def test_overwrite_only_replaces_a_prepared_folder(cpt_pm, mistral_tokenizer_dir, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "Hello world"}])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="refusing to delete"):
        run(cpt_pm, mistral_tokenizer_dir, [src], tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"
    run(cpt_pm, mistral_tokenizer_dir, [src], tmp_path / "out", max_length=4)
    run(cpt_pm, mistral_tokenizer_dir, [src], tmp_path / "out", max_length=8, overwrite=True)
    assert read_manifest(tmp_path / "out")["max_length"] == 8


def test_progress_bar_reports_bytes_documents_and_throughput(cpt_pm, mistral_tokenizer_dir, data_dir, tmp_path, capsys):
    run(cpt_pm, mistral_tokenizer_dir, [data_dir / "zh_poetry_sample.jsonl"], tmp_path / "out", max_length=512, progress=True)
    err = capsys.readouterr().err
    size_kb = (data_dir / "zh_poetry_sample.jsonl").stat().st_size / 1000
    assert "prepare pretrain" in err and "467 docs" in err and "tok/s" in err
    assert f"{size_kb:.1f}/{size_kb:.1f} kB" in err  # every byte accounted for


def test_console_script_finds_the_command_after_global_options():
    from cptcore.cli.main import command_name

    assert command_name(["prepare", "pretrain", "--input", "x"]) == "prepare"
    assert command_name(["--plugin", "my.py", "prepare", "pretrain"]) == "prepare"  # not 'my.py'
    assert command_name(["--plugin=my.py", "prepare"]) == "prepare"
    assert command_name(["--version"]) is None


def test_console_script_prepares_without_torch_and_writes_the_same_rows(cpt_pm, smollm2_tokenizer_dir, tmp_path):
    """`cpt prepare` (the console script) keeps transformers from importing torch (USE_TORCH=0,
    cptcore/cli/main.py) in the driver and its workers; the rows equal the in-process run's."""
    import os
    import subprocess
    import sys

    src = Path(__file__).parent / "data" / "zh_poetry_sample.jsonl"
    probe = ("import atexit, sys; from cptcore.cli.main import main; "
             "atexit.register(lambda: print('TORCH', 'torch' in sys.modules, os.environ.get('USE_TORCH'))); import os; "
             "sys.argv = ['cpt', *sys.argv[1:]]; main()")
    env = {k: v for k, v in os.environ.items() if k != "USE_TORCH"}
    proc = subprocess.run([sys.executable, "-c", probe, "prepare", "pretrain", "--tokenizer", str(smollm2_tokenizer_dir),
                           "--input", str(src), "--out", str(tmp_path / "cli"), "--max-length", "64", "--num-proc", "2",
                           "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TORCH False 0" in proc.stdout
    assert "None of PyTorch" not in proc.stderr  # transformers' warning without torch, true here but alarming
    run(cpt_pm, smollm2_tokenizer_dir, [src], tmp_path / "lib", max_length=64, num_proc=2)
    import torch  # noqa: F401  (the in-process run had torch, as a library caller does)

    cli, lib = load(tmp_path / "cli"), load(tmp_path / "lib")
    assert len(cli) > 0 and cli["input_ids"] == lib["input_ids"] and cli["labels"] == lib["labels"]
