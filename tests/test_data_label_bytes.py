"""The ``label_bytes`` column: UTF-8 bytes of the tokens that carry loss, per row, exact
(the attribution rule is in cptcore/data/token_bytes.py)."""

import json
from pathlib import Path

import numpy as np
import pytest

from cptcore.data.pipeline import PrepareArgs, prepare
from cptcore.data.token_bytes import byte_table, row_label_bytes, settle, token_bytes
from cptcore.data.tokenize import load_tokenizer

# "Hello 世界 飨" is 16 UTF-8 bytes; SmolLM2 writes "飨" (3 bytes) as three byte tokens,
# and " 飨" as [" " + first byte, second byte, third byte].
DOC1, DOC2 = "Hello 世界 飨", "饕餮 ok"


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def run(pm, kind, tok, inputs, out, **kw):
    args = PrepareArgs(kind=kind, tokenizer=str(tok), inputs=tuple(str(i) for i in inputs), out=str(out), **kw)
    return prepare(pm, args)


def rows(out):
    from datasets import load_from_disk

    return list(load_from_disk(str(out)))


def test_byte_table_shares_a_split_character_between_its_byte_tokens(smollm2_tokenizer_dir):
    tok = load_tokenizer(str(smollm2_tokenizer_dir))
    table = byte_table(tok)
    ids = tok(" 飨", add_special_tokens=False)["input_ids"]
    assert ids == [30866, 113, 118] and table[ids].tolist() == [2, 1, 1]  # " \xe9" | "\xa3" | "\xa8"
    assert table[tok("飨", add_special_tokens=False)["input_ids"]].tolist() == [1, 1, 1]
    assert table[[0, 1, 2]].tolist() == [0, 0, 0]  # <|endoftext|> <|im_start|> <|im_end|>
    ids = tok(DOC1, add_special_tokens=False)["input_ids"]
    assert table[ids].tolist() == [5, 1, 2, 1, 1, 1, 1, 2, 1, 1] and table[ids].sum() == len(DOC1.encode())


def test_settle_sentencepiece_dummy_prefix_mistral(mistral_tokenizer_dir):
    tok = load_tokenizer(str(mistral_tokenizer_dir))
    table = byte_table(tok)
    ids = [1, *tok("Hello world", add_special_tokens=False)["input_ids"], 2]
    assert ids == [1, 22557, 1526, 2]
    assert table[ids].tolist() == [0, 6, 6, 0]  # "▁Hello" "▁world": the first ▁ is the dummy prefix
    assert token_bytes(table, ids, "Hello world").tolist() == [0, 5, 6, 0]
    ids = tok("飨", add_special_tokens=False)["input_ids"]  # byte fallback: <0xE9> <0xA3> <0xA8> (after ▁)
    assert token_bytes(table, ids, "飨").sum() == 3
    assert settle(np.array([0, 1, 2], np.int32), 1).tolist() == [0, 0, 1]
    assert settle(np.array([2, 1], np.int32), 5).tolist() == [4, 1]
    assert row_label_bytes(np.array([5, -100, 7]), np.array([9, 3, 4])) == 4  # position 0 never predicted


def test_splice_rows_split_documents_and_characters_exact(cpt_pm, smollm2_tokenizer_dir, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": DOC1}, {"text": DOC2}])
    m = run(cpt_pm, "pretrain", smollm2_tokenizer_dir, [src], tmp_path / "out", max_length=4)
    got = rows(tmp_path / "out")
    # bytes per token: DOC1 [5,1,2,1 | 1,1,1,2 | 1,1] + EOS 0; DOC2 (饕 = 180 115 239, 餮 = 180 114 123,
    # " ok") [1 | 1,1,1,1 | 1,3] + EOS 0. Each row counts positions 1..3 (position 0 is never
    # predicted): "飨" is split over rows 2 and 3, "饕" and "餮" over rows 3, 4 and 5.
    assert [r["input_ids"] for r in got] == [[19556, 216, 7906, 240], [178, 239, 230, 30866], [113, 118, 2, 180],
                                             [115, 239, 180, 114], [123, 10907, 2, 0]]
    assert [r["label_bytes"] for r in got] == [1 + 2 + 1, 1 + 1 + 2, 1 + 0 + 1, 1 + 1 + 1, 3 + 0]
    assert m["label_bytes"] == 16
    # every byte of both documents is either counted or sits on a row's unpredicted first token
    assert m["label_bytes"] + (5 + 1 + 1 + 1 + 1) == len(DOC1.encode()) + len(DOC2.encode())


@pytest.mark.parametrize("packer", ["greedy", "bfd"])
def test_whole_document_packers_count_each_document_once(cpt_pm, smollm2_tokenizer_dir, tmp_path, packer):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": DOC1}, {"text": DOC2}])
    m = run(cpt_pm, "pretrain", smollm2_tokenizer_dir, [src], tmp_path / "out", max_length=16, packer=packer)
    got = rows(tmp_path / "out")
    assert len(got) == 2  # 11 and 9 tokens do not share a row of 16
    first = {19556: 5, 180: 1}  # each row starts with its document's first token (unpredicted)
    assert sorted(r["label_bytes"] for r in got) == sorted([16 - 5, 9 - 1])
    assert all(r["label_bytes"] == (16 if r["input_ids"][0] == 19556 else 9) - first[r["input_ids"][0]] for r in got)
    assert m["label_bytes"] == 11 + 8


def test_source_target_pair_counts_only_the_target(cpt_pm, smollm2_tokenizer_dir, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"source": "问：", "target": "答 飨"}])
    run(cpt_pm, "pretrain", smollm2_tokenizer_dir, [src], tmp_path / "out", max_length=32)
    (row,) = rows(tmp_path / "out")
    assert row["label_bytes"] == len("答 飨".encode())  # 7; the source's tokens carry no labels


def test_sft_counts_assistant_text_not_markup(cpt_pm, smollm2_tokenizer_dir, tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [{"messages": [{"role": "user", "content": "你好"},
                                                           {"role": "assistant", "content": "飨 yes"}]}])
    m = run(cpt_pm, "sft", smollm2_tokenizer_dir, [src], tmp_path / "out")
    (row,) = rows(tmp_path / "out")
    # trained: é £ ¨ (飨, 3 bytes), " yes" (4), <|im_end|> (markup, 0)
    assert [x for x in row["labels"] if x != -100] == [180, 113, 118, 9805, 2]
    assert row["label_bytes"] == 7 and m["label_bytes"] == 7


def test_real_text_totals_equal_utf8_length(cpt_pm, smollm2_tokenizer_dir, data_dir, tmp_path):
    """Bundled Chinese poetry, one document per row (no packer): every row's bytes are the
    document's UTF-8 length minus its first token's."""
    lines = [json.loads(x)["text"] for x in (data_dir / "zh_poetry_sample.jsonl").read_text(encoding="utf-8").splitlines()[:20]]
    src = write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in lines])
    run(cpt_pm, "pretrain", smollm2_tokenizer_dir, [src], tmp_path / "out", max_length=4096, packer=None)
    tok = load_tokenizer(str(smollm2_tokenizer_dir))
    table = byte_table(tok)
    got = rows(tmp_path / "out")
    assert len(got) == len(lines)
    for text, row in zip(lines, got):
        assert row["label_bytes"] == len(text.encode()) - int(table[row["input_ids"][0]])
