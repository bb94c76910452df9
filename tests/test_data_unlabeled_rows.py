"""No row without a label token (issue 12, item 1): an all-masked row trains nothing and
its mean loss is 0/0 = NaN (the ColossalAI #5370 pattern). Packers drop and count such
rows, `{source, target}` records whose source fills a row are skipped and counted, the
manifest counts unlabeled rows and `cpt train` refuses a folder that has any."""

import json

import pytest

from cptcore.data.manifest import check_labelled, read_manifest, unlabeled_rows
from cptcore.data.packing import BfdPacker, GreedyPacker, PassThrough, SplicePacker, fit_long, make_doc, pack_all
from cptcore.data.pipeline import PrepareArgs, prepare
from cptcore.errors import DataError

M = -100


def doc(ids, labels):
    return make_doc(ids, labels)


def rows_of(rows):
    return [(r.input_ids.tolist(), r.labels.tolist(), r.position_ids.tolist()) for r in rows]


def test_splice_drops_a_row_cut_wholly_from_masked_spans_and_counts_it():
    # labels: 1 2 3 4 | m m m m | 9 10  -> the middle row (a masked tail + a masked prompt) has no label
    docs = [doc([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, M, M]), doc([7, 8, 9, 10], [M, M, 9, 10])]
    packer = SplicePacker(4, 0)
    rows = pack_all(packer, docs)
    assert rows_of(rows) == [
        ([1, 2, 3, 4], [1, 2, 3, 4], [0, 1, 2, 3]),
        ([9, 10, 0, 0], [9, 10, M, M], [0, 1, 0, 1]),
    ]
    assert (packer.dropped.rows, packer.dropped.tokens) == (1, 4)


def test_fault_a_row_whose_only_label_is_its_first_is_dropped_by_every_packer():
    """Was: kept as labelled. The model shifts labels (position t predicts labels[t+1]),
    so labels[0] of a row is never trained: a document's trained EOS spliced to the start
    of a row before a masked source, or a one-token last row, trains nothing (NaN)."""
    # splice: | 1 2 3 4 | 5 m m m | 9 10 : the second row's only label is its first token
    docs = [doc([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]), doc([6, 7, 8, 9, 10], [M, M, M, 9, 10])]
    packer = SplicePacker(4, 0)
    rows = pack_all(packer, docs)
    assert rows_of(rows) == [([1, 2, 3, 4], [1, 2, 3, 4], [0, 1, 2, 3]), ([9, 10, 0, 0], [9, 10, M, M], [0, 1, 0, 1])]
    assert (packer.dropped.rows, packer.dropped.tokens) == (1, 4)
    # splice: a stream of max_length * k + 1 tokens leaves a one-token last row
    packer = SplicePacker(4, 0)
    assert rows_of(pack_all(packer, [doc([1, 2, 3, 4, 5], None)])) == [([1, 2, 3, 4], [1, 2, 3, 4], [0, 1, 2, 3])]
    assert (packer.dropped.rows, packer.dropped.tokens) == (1, 1)
    # whole-document packers: a one-token document alone in its row
    for packer in (GreedyPacker(4, 0), BfdPacker(4, 0), PassThrough(4, 0)):
        assert pack_all(packer, [doc([7], [7])]) == [], type(packer).__name__
        assert (packer.dropped.rows, packer.dropped.tokens) == (1, 1)


@pytest.mark.parametrize("make", [lambda: GreedyPacker(4, 0), lambda: BfdPacker(4, 0), lambda: PassThrough(4, 0)])
def test_whole_document_packers_never_emit_a_row_without_label(make):
    packer = make()
    rows = pack_all(packer, [doc([1, 2, 3], [M, M, M]), doc([4, 5], [4, 5])])
    assert all((r.labels != M).any() for r in rows)
    assert [r.input_ids.tolist()[:2] for r in rows] == [[4, 5]]
    assert (packer.dropped.rows, packer.dropped.tokens) == (1, 3)


def test_long_document_policies_leave_out_pieces_without_label():
    d = doc([1, 2, 3, 4, 5, 6], [M, M, M, M, M, 6])
    assert [p.input_ids.tolist() for p in fit_long(d, 2, "split")] == [[5, 6]]
    assert fit_long(d, 4, "truncate") == []  # the first 4 tokens carry no label
    assert [p.labels.tolist() for p in fit_long(d, 4, "truncate", eos_id=6)] == [[M, M, M, 6]]


# ---------------------------------------------------------------------------- end to end

# SmolLM2 ids: "word "*10 + "yes" -> 10 masked source tokens; "Q: hi " + "A: yo" -> 8 tokens
# (the space before "A" joins the target token " A", 330, which is trained); EOS is 2.
LONG_SOURCE = {"source": "word " * 10, "target": "yes"}
SHORT = {"source": "Q: hi ", "target": "A: yo"}
SPANS = {"source": "word " * 6, "target": "A: yo"}  # 6 masked + 5 trained = 11 tokens > 8
B = [65, 42, 15876, 330, 42, 329, 95, 2]
C = [3002, 2229, 2229, 2229, 2229, 2229, 330, 42, 329, 95, 2]


def _prepare(pm, tok, rows, out, **kw):
    src = out.parent / f"{out.name}.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args = PrepareArgs(kind="pretrain", tokenizer=str(tok), inputs=(str(src),), out=str(out), max_length=8, **kw)
    return prepare(pm, args)


def _load(out):
    from datasets import load_from_disk

    ds = load_from_disk(str(out))
    return ds["input_ids"], ds["labels"]


@pytest.mark.parametrize("packer", ["splice", "greedy", "bfd"])
def test_fault_source_longer_than_max_length_is_skipped_and_counted_by_every_packer(cpt_pm, smollm2_tokenizer_dir, tmp_path, packer):
    """Was: the long source packed whole, a row with no label, nothing skipped, and
    `cpt train` logged `loss nan` on that step."""
    m = _prepare(cpt_pm, smollm2_tokenizer_dir, [LONG_SOURCE, SHORT, SPANS], tmp_path / packer, packer=packer)
    ids, labels = _load(tmp_path / packer)
    assert ids == [B, C[:8], C[8:] + [0] * 5]
    assert labels == [
        [M, M, M, 330, 42, 329, 95, 2],
        [M] * 6 + [330, 42],
        [329, 95, 2] + [M] * 5,
    ]
    assert m["documents"]["skipped"] == {"source longer than max_length": 1}
    assert m["documents"]["read"] == 3 and m["documents"]["packed"] == 2
    t = m["tokens"]
    assert (t["in"], t["out"], t["skipped"], t["truncated"], t["dropped"]) == (31, 19, 12, 0, 0)
    assert t["in"] == t["out"] + t["truncated"] + t["skipped"] + t["dropped"]
    assert m["packs_without_labels"] == 0 and m["packs_dropped"] == 0
    assert unlabeled_rows(tmp_path / packer) == 0


@pytest.mark.parametrize("packer", ["greedy", "bfd"])
def test_truncate_policy_with_long_sources_never_gives_unlabeled_rows(cpt_pm, smollm2_tokenizer_dir, tmp_path, packer):
    m = _prepare(cpt_pm, smollm2_tokenizer_dir, [LONG_SOURCE, SPANS], tmp_path / packer, packer=packer, long_doc="truncate")
    ids, labels = _load(tmp_path / packer)
    assert ids == [C[:7] + [2]] and labels == [[M] * 6 + [330, 2]]  # the EOS is kept
    assert m["documents"]["skipped"] == {"source longer than max_length": 1}
    assert m["tokens"]["truncated"] == 3


def test_empty_target_without_eos_is_skipped_as_no_target_tokens(cpt_pm, smollm2_tokenizer_dir, tmp_path):
    rows = [{"source": "hello", "target": ""}, SHORT]
    m = _prepare(cpt_pm, smollm2_tokenizer_dir, rows, tmp_path / "noeos", add_eos=False, on_error="stop")
    assert m["documents"]["skipped"] == {"no target tokens": 1}  # a policy skip, even with --on-error stop
    assert _load(tmp_path / "noeos")[1] == [[M, M, M, 330, 42, 329, 95, M]]
    m = _prepare(cpt_pm, smollm2_tokenizer_dir, rows, tmp_path / "eos")  # with EOS, the EOS is the target
    assert m["documents"]["skipped"] == {} and _load(tmp_path / "eos")[1][0][:2] == [M, 2]


def test_fault_splice_row_of_an_eos_then_a_masked_source_is_dropped_end_to_end(cpt_pm, smollm2_tokenizer_dir, tmp_path):
    """Was: `[EOS (trained), 7 masked source tokens]` written as a labelled row, and
    counted as labelled; its only label is never predicted, so that step's loss was NaN."""
    first = {"source": "", "target": "word " * 7 + "yes"}  # 8 trained tokens + EOS: one over row 1
    long_source = {"source": "word " * 7, "target": "yes"}  # 7 masked + " yes" + EOS
    m = _prepare(cpt_pm, smollm2_tokenizer_dir, [first, long_source], tmp_path / "o")
    ids, labels = _load(tmp_path / "o")
    words = [3002] + [2229] * 6
    assert ids == [words + [9805], [9805, 2] + [0] * 6]  # row 2 ([2] + 7 masked words) dropped
    assert labels == [words + [9805], [9805, 2] + [M] * 6]
    assert (m["packs"], m["packs_dropped"], m["packs_without_labels"]) == (2, 1, 0)
    t = m["tokens"]
    assert (t["in"], t["out"], t["dropped"]) == (18, 10, 8)
    assert t["in"] == t["out"] + t["truncated"] + t["skipped"] + t["dropped"]
    assert unlabeled_rows(tmp_path / "o") == 0


class TokenPerRowPacker:
    """A plugin packer that cuts a document into padded rows of 1, 2, 2, ..., 2, 1 tokens
    (boundaries 0, 1, 3, 5, ...), labelled or not."""

    def __init__(self, max_length, pad_id, options):
        from cptcore.data.packing import build_row, make_doc

        self.row = lambda a, b, d: build_row([make_doc(d.input_ids[a:b], d.labels[a:b])], max_length, pad_id)

    def add(self, d):
        cuts = [0, *range(1, len(d), 2), len(d)]
        return [self.row(a, b, d) for a, b in zip(cuts, cuts[1:])]

    def flush(self):
        return []


def test_rows_without_label_from_a_plugin_packer_are_dropped_and_counted(smollm2_tokenizer_dir, tmp_path):
    from cptcore import PackerSpec, hookimpl, make_plugin_manager

    class Plugin:
        @hookimpl
        def cpt_register_packers(self):
            return [PackerSpec(name="token_per_row", make=TokenPerRowPacker)]

    pm = make_plugin_manager(entrypoints=False, extra=[Plugin()])
    m = _prepare(pm, smollm2_tokenizer_dir, [SHORT], tmp_path / "out", packer="token_per_row")
    ids, labels = _load(tmp_path / "out")
    # rows [65] [42 15876] [330 42] [329 95] [2]: the first two are masked, the last one's only
    # label is its first token (never predicted): all three dropped
    assert [r[:2] for r in ids] == [[330, 42], [329, 95]] and [r[:2] for r in labels] == [[330, 42], [329, 95]]
    assert (m["packs"], m["packs_dropped"], m["tokens"]["dropped"], m["packs_without_labels"]) == (2, 3, 4, 0)
    t = m["tokens"]
    assert t["in"] == t["out"] + t["truncated"] + t["skipped"] + t["dropped"]


def test_fault_unlabeled_rows_found_in_an_older_folder_and_refused(cpt_pm, smollm2_tokenizer_dir, tmp_path):
    import datasets

    good = tmp_path / "good"
    _prepare(cpt_pm, smollm2_tokenizer_dir, [SHORT], good)
    check_labelled(read_manifest(good), good)
    # an older cpt prepare: a row with no label, and a manifest that does not count them
    old = tmp_path / "old"
    rows = {"input_ids": [B, B, B], "labels": [[M] * 8, B, [2] + [M] * 7], "position_ids": [list(range(8))] * 3}
    feats = datasets.load_from_disk(str(good)).features  # an older folder: no label_bytes column
    datasets.Dataset.from_dict(rows, features=datasets.Features({k: feats[k] for k in rows})).save_to_disk(str(old))
    manifest = read_manifest(good)
    del manifest["packs_without_labels"]
    (old / "manifest.json").write_text(json.dumps({**manifest, "packs": 3}))
    assert unlabeled_rows(old) == 2  # all masked, and only labels[0] (never predicted)
    with pytest.raises(DataError, match=r"old: 2 of 3 rows have no label token"):
        check_labelled(read_manifest(old), old)
    with pytest.raises(DataError, match="3 of 5 rows"):
        check_labelled({"packs": 5, "packs_without_labels": 3}, good)


def test_cpt_train_refuses_a_folder_whose_manifest_counts_unlabeled_rows(cpt_cli, smollm2_tokenizer_dir, tmp_path):
    from train_support import tiny_model

    data = tmp_path / "data"
    _prepare(make_pm(), smollm2_tokenizer_dir, [SHORT] * 4, data)
    manifest = read_manifest(data)
    (data / "manifest.json").write_text(json.dumps({**manifest, "packs_without_labels": 1}))
    model = tiny_model(tmp_path / "model", smollm2_tokenizer_dir)
    code, out = cpt_cli("train", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "run"),
                        "--max-steps", "1", "--set", "logging.progress=false")
    assert code == 1
    assert f"error: {data}: 1 of 4 rows have no label token" in out
    assert not (tmp_path / "run").exists()


def make_pm():
    from cptcore import make_plugin_manager

    return make_plugin_manager(entrypoints=False)
