"""Packers: exact rows, positions, padding, nothing dropped (pure numpy, no tokenizer)."""

import numpy as np
import pytest

from cptcore.data.packing import BfdPacker, GreedyPacker, PassThrough, SplicePacker, fit_long, make_doc, pack_all
from cptcore.data.packing_options import BfdOptions, SpliceOptions, WholeDocOptions

PAD = 0


def docs_of(*lengths, start=1):
    out, nxt = [], start
    for n in lengths:
        out.append(make_doc(list(range(nxt, nxt + n))))
        nxt += n
    return out


def test_splice_exact_rows_positions_and_last_partial_pack_kept():
    rows = pack_all(SplicePacker(4, PAD), docs_of(3, 2, 5))  # 10 tokens -> 2 full rows + 1 partial
    assert [r.input_ids.tolist() for r in rows] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]]
    # positions restart at every document start and at every row start
    assert rows[0].position_ids.tolist() == [0, 1, 2, 0]
    assert rows[1].position_ids.tolist() == [0, 0, 1, 2]
    assert rows[2].position_ids.tolist() == [0, 1, 0, 1]  # 2 real tokens, then the pad span from 0
    assert rows[2].labels.tolist() == [9, 10, -100, -100]
    assert [r.n_pad for r in rows] == [0, 0, 2]
    # a one-token last row would train nothing (labels[0] is never predicted): dropped, counted
    packer = SplicePacker(4, PAD)
    assert len(pack_all(packer, docs_of(3, 2, 4))) == 2 and (packer.dropped.rows, packer.dropped.tokens) == (1, 1)
    assert all(r.input_ids.dtype == np.int32 and r.position_ids.dtype == np.int32 for r in rows)


def test_fault_seed_splicer_dropped_last_partial_pack_of_every_buffer():
    """The seed's splicer dropped the tail of every buffer; ours keeps every token, in
    order, across any number of add() calls."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, size=300).tolist()
    docs = docs_of(*lengths)
    rows = pack_all(SplicePacker(64, PAD), docs)
    real = np.concatenate([r.input_ids[: len(r.input_ids) - r.n_pad] for r in rows])
    assert real.tolist() == np.concatenate([d.input_ids for d in docs]).tolist()
    assert all(len(r.input_ids) == 64 for r in rows)
    assert sum(r.n_pad for r in rows) == len(rows) * 64 - sum(lengths)


def test_splice_keep_last_short():
    rows = pack_all(SplicePacker(4, PAD, SpliceOptions(last="keep")), docs_of(6))
    assert [r.input_ids.tolist() for r in rows] == [[1, 2, 3, 4], [5, 6]]
    assert rows[1].n_pad == 0
    with pytest.raises(ValueError):
        SpliceOptions(last="drop")


def test_greedy_whole_documents_in_order():
    rows = pack_all(GreedyPacker(6, PAD), docs_of(3, 2, 4, 6))
    assert [r.input_ids.tolist() for r in rows] == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 0, 0], [10, 11, 12, 13, 14, 15]]
    assert rows[0].position_ids.tolist() == [0, 1, 2, 0, 1, 0]
    assert rows[0].labels.tolist() == [1, 2, 3, 4, 5, -100]
    rows = pack_all(GreedyPacker(6, PAD, WholeDocOptions(pad=False)), docs_of(3, 2, 4))
    assert [len(r.input_ids) for r in rows] == [5, 4]


def test_bfd_best_fit_decreasing_exact_bins():
    # lengths 5,4,3,3,2,1 into bins of 8, best fit decreasing:
    # 5 -> A(rem3); 4 -> B(rem4); 3 -> A (rem 3 is the tightest fit) -> A full; 3 -> B(rem1);
    # 2 -> C(rem6); 1 -> B (rem1 tightest) -> B full.
    docs = docs_of(3, 5, 1, 4, 2, 3)  # ids: [1-3], [4-8], [9], [10-13], [14-15], [16-18]
    rows = pack_all(BfdPacker(8, PAD), docs)
    assert [r.input_ids.tolist() for r in rows] == [
        [4, 5, 6, 7, 8, 1, 2, 3],
        [10, 11, 12, 13, 16, 17, 18, 9],
        [14, 15, 0, 0, 0, 0, 0, 0],
    ]
    assert rows[1].position_ids.tolist() == [0, 1, 2, 3, 0, 1, 2, 0]
    assert sum(8 - r.n_pad for r in rows) == 18


def test_bfd_is_tighter_than_greedy_and_buffer_bounds_memory():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 200, size=500).tolist()
    greedy = pack_all(GreedyPacker(256, PAD), docs_of(*lengths))
    bfd = pack_all(BfdPacker(256, PAD), docs_of(*lengths))
    assert len(bfd) < len(greedy)
    assert sorted(np.concatenate([r.input_ids[: 256 - r.n_pad] for r in bfd]).tolist()) == list(range(1, sum(lengths) + 1))
    packer = BfdPacker(256, PAD, BfdOptions(buffer_docs=10))
    emitted = [packer.add(d) for d in docs_of(*lengths[:25])]
    assert [bool(e) for e in emitted].count(True) == 2  # flushed at the 10th and 20th document
    assert len(packer._docs) == 5


def test_whole_doc_packers_refuse_long_documents_and_fit_long_policies():
    with pytest.raises(ValueError):
        GreedyPacker(4, PAD).add(make_doc([1, 2, 3, 4, 5]))
    doc = make_doc([1, 2, 3, 4, 5, 6, 7], labels=[-100, 2, 3, 4, 5, 6, 7])
    assert [d.input_ids.tolist() for d in fit_long(doc, 3, "split")] == [[1, 2, 3], [4, 5, 6], [7]]
    assert fit_long(doc, 3, "split")[0].labels.tolist() == [-100, 2, 3]
    assert [d.input_ids.tolist() for d in fit_long(doc, 3, "truncate")] == [[1, 2, 3]]
    assert fit_long(doc, 3, "skip") == []
    assert fit_long(doc, 7, "skip")[0] is doc


def test_passthrough_one_unpadded_row_per_document():
    rows = pack_all(PassThrough(8, PAD), docs_of(3, 5))
    assert [r.input_ids.tolist() for r in rows] == [[1, 2, 3], [4, 5, 6, 7, 8]]
    assert rows[1].position_ids.tolist() == [0, 1, 2, 3, 4]


def test_builtin_packers_registered(cpt_pm):
    reg = cpt_pm.registry("packers")
    assert {"splice", "greedy", "bfd"} <= set(reg.names())
    assert reg.get("splice").splits_documents and not reg.get("bfd").splits_documents
    packer = reg.get("bfd").make(8, 3, BfdOptions(pad=True))
    rows = pack_all(packer, docs_of(2))
    assert rows[0].input_ids.tolist() == [1, 2, 3, 3, 3, 3, 3, 3]
