"""data.mixing: token-exact mixing with per-source cursors, re-epochs, repeat false,
Colossal-LLaMA-2 buckets, data-parallel shards (cptcore.recipes.mixing)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from cptcore.errors import ConfigError
from cptcore.recipes import mixing
from cptcore.train import data as tdata
from train_support import DATA, prepare, run_config, tiny_model

SFT = ["sft_en_chatterbot_sample.jsonl", "sft_zh_chatterbot.jsonl", "sft_en_python_faq.jsonl"]


@pytest.fixture(scope="module")
def sft(tmp_path_factory, smollm2_tokenizer_dir):
    """Three real prepared SFT folders (unpacked rows: tokens per row differ)."""
    root = tmp_path_factory.mktemp("mixing")
    folders = [prepare(root / name.split(".")[0], smollm2_tokenizer_dir, [str(DATA / name)], max_length=256,
                       kind="sft") for name in SFT]
    return {"root": root, "folders": folders, "tok": smollm2_tokenizer_dir}


def _sampler(folders, weights, mode="tokens", mbs=2, dp=1, rank=0, seed=5, repeats=None, log=None, **cfg):
    ds = [tdata.open_dataset(f) for f in folders]
    data = tdata.MixedDataset(ds, weights)
    conf = SimpleNamespace(mixing=mode, repeat=cfg.pop("repeat", True), buckets=cfg.pop("buckets", 10),
                           shuffle=cfg.pop("shuffle", True))
    return mixing.make_sampler(data, ds, folders, repeats or [True] * len(folders), conf, mbs, dp, rank, seed,
                               log=log or (lambda m: None))


def _label_tokens(folder):
    ds = tdata.open_dataset(folder)
    return np.asarray([int((np.asarray(ds[i]["labels"]) != -100).sum()) for i in range(len(ds))])


def test_row_token_counts_are_label_tokens(sft):
    for f in sft["folders"]:
        assert mixing.row_token_counts(tdata.open_dataset(f)).tolist() == _label_tokens(f).tolist()


def test_token_shares_within_one_percent(sft):
    counts = [_label_tokens(f) for f in sft["folders"]]
    assert len({int(c.min()) for c in counts} | {int(c.max()) for c in counts}) > 2  # rows differ in tokens
    weights = [0.5, 0.3, 0.2]
    s = _sampler(sft["folders"], weights)
    rows = [p for _ in range(600) for p in s.next_batch()[0]]  # 1,200 rows
    assert len(rows) == 1200
    tokens = np.zeros(3)
    for src, r in rows:
        tokens[src] += counts[src][r]
    share = tokens / tokens.sum()
    assert np.abs(share - np.asarray(weights)).max() < 0.01, share
    rep = s.report()
    names = list(rep)
    assert [rep[n]["tokens"] for n in names] == tokens.astype(int).tolist()
    assert [rep[n]["rows"] for n in names] == np.bincount([p[0] for p in rows], minlength=3).tolist()
    assert [rep[n]["target"] for n in names] == pytest.approx(weights)
    assert s.tally.metrics()[f"data/{names[0]}/share"] == pytest.approx(share[0])
    # row-weighted mixing misses token targets on the same data: the mode changes something
    r = _sampler(sft["folders"], weights, mode="rows")
    for _ in range(300):
        r.next_batch()
    assert max(abs(v["share"] - v["target"]) for v in r.report().values()) > 0.02


def test_resume_midway_gives_identical_rows(sft):
    ref = _sampler(sft["folders"], [1.0, 2.0, 1.0])
    full = [ref.next_batch() for _ in range(400)]  # past at least one re-epoch
    assert max(v["epochs"] for v in ref.report().values()) >= 2
    a = _sampler(sft["folders"], [1.0, 2.0, 1.0])
    for _ in range(137):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))  # through JSON, as the checkpoint stores it
    b = _sampler(sft["folders"], [1.0, 2.0, 1.0])
    b.load_state_dict(state)
    assert [b.next_batch() for _ in range(263)] == full[137:]
    assert b.report() == ref.report()
    with pytest.raises(ConfigError, match="data.mixing=tokens, this run has rows"):
        _sampler(sft["folders"], [1.0, 2.0, 1.0], mode="rows").load_state_dict(state)


def test_re_epochs_counted_and_logged(sft):
    n = [len(tdata.open_dataset(f)) for f in sft["folders"]]
    logged = []
    s = _sampler(sft["folders"][2:], [1.0], mbs=1, log=logged.append)
    seen = [s.next_batch()[0][0][1] for _ in range(2 * n[2] + 3)]
    name = sft["folders"][2].name
    assert logged == [f"data: source {name} re-epoched (epoch 2)", f"data: source {name} re-epoched (epoch 3)"]
    assert sorted(seen[:n[2]]) == list(range(n[2]))  # a full pass before any repeat
    assert seen[:n[2]] != seen[n[2]:2 * n[2]]  # each pass its own permutation
    assert s.report()[name]["epochs"] == 3 and s.epoch == 2


@pytest.mark.parametrize("how", ["source", "global"])
def test_repeat_false_stops_and_keeps_state(sft, how):
    kw = {"repeats": [True, True, False]} if how == "source" else {"repeat": False}
    s = _sampler(sft["folders"], [1.0, 1.0, 1.0], **kw)
    n_last = len(tdata.open_dataset(sft["folders"][2]))
    with pytest.raises(mixing.DataExhausted, match="is used up"):
        for _ in range(10_000):
            before = s.state_dict()
            s.next_batch()
    assert s.state_dict() == before  # the failed micro-batch left no trace
    assert s.report()[sft["folders"][2].name]["rows"] >= n_last - 1
    with pytest.raises(ConfigError, match="needs data.mixing tokens or bucketed"):
        _sampler(sft["folders"], [1.0, 1.0, 1.0], mode="rows", **kw)


def test_norepeat_syntax(tmp_path):
    assert tdata.parse_source("a/b:0.3:norepeat") == tdata.Source(tdata.Path("a/b"), 0.3, False)
    assert tdata.parse_source("a/b:norepeat") == tdata.Source(tdata.Path("a/b"), 1.0, False)
    assert tdata.parse_source("a/b:2") == tdata.Source(tdata.Path("a/b"), 2.0, True)
    from cptcore.train.plan import absolute_inputs

    conf = run_config(tmp_path / "o", tmp_path, ["rel/x:0.5:norepeat"])
    assert absolute_inputs(conf).data.train == [str(tdata.Path.cwd() / "rel/x") + ":0.5:norepeat"]


def test_bucketed_order_matches_the_scheme():
    """Two sources of 4 and 6 rows, equal weights: 5 rows each per epoch (source 0
    cycles: rows 0,1,2,3,0), 2 buckets: bucket b holds bin b of each source."""
    data = tdata.MixedDataset([list(range(4)), list(range(6))], [1.0, 1.0])
    tally = mixing._Tally(["a", "b"], [1.0, 1.0], [np.ones(4, dtype=np.int64), np.ones(6, dtype=np.int64)])
    s = mixing.BucketedSampler(data, 1, 1, 0, 0, False, tally, buckets=2)
    assert s.plan(0).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2],
                                  [0, 3], [0, 0], [1, 3], [1, 4]]
    shuffled = mixing.BucketedSampler(data, 1, 1, 0, 0, True, tally, buckets=2).plan(0).tolist()
    assert shuffled != s.plan(0).tolist()
    assert sorted(shuffled[:6]) == s.plan(0).tolist()[:6] and sorted(shuffled[6:]) == sorted(s.plan(0).tolist()[6:])
    pairs = [p for _ in range(10) for p in s.next_batch()[0]]
    assert s.report()["a"]["rows"] == 5 and s.report()["b"]["rows"] == 5 and len(pairs) == 10


@pytest.mark.parametrize("mode", ["tokens", "bucketed"])
def test_dp_ranks_disjoint_same_steps(sft, mode):
    one = _sampler(sft["folders"], [1.0, 1.0, 1.0], mode=mode, mbs=4)
    ranks = [_sampler(sft["folders"], [1.0, 1.0, 1.0], mode=mode, mbs=2, dp=2, rank=r) for r in range(2)]
    for _ in range(50):
        glob = one.next_batch()[0]
        parts = [r.next_batch()[0] for r in ranks]
        assert parts[0] + parts[1] == glob and not set(parts[0]) & set(parts[1])
    assert ranks[0].state_dict()["sources"] == ranks[1].state_dict()["sources"] == one.state_dict()["sources"]


def test_training_stops_on_used_up_source_with_checkpoint(sft):
    """data.repeat false in a real (tiny) run: stops before max_steps, checkpoint and
    summary with the realised shares; metrics carry data/NAME/share."""
    from cptcore.plugins import make_plugin_manager
    from cptcore.train.plan import precheck
    from cptcore.train.trainer import Trainer

    root = sft["root"]
    model = tiny_model(root / "model", sft["tok"])
    small = sft["folders"][2]
    n_small = len(tdata.open_dataset(small))
    out = root / "run"
    conf = run_config(out, model, [f"{sft['folders'][0]}:1", f"{small}:3:norepeat"], training__max_steps=1000,
                      data__mixing="tokens", training__micro_batch_size=16, checkpointing__save_every=0,
                      logging__loggers=["jsonl"], logging__log_every=1)
    pm = make_plugin_manager(entrypoints=False)
    summary = Trainer(precheck(conf, pm), pm).fit()
    assert summary["steps"] < 1000 and "is used up" in summary["stopped"]
    assert (out / "checkpoints" / f"step-{summary['steps']}").is_dir()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["data_mixing"]["mode"] == "tokens"
    rep = saved["data_mixing"]["sources"]
    assert n_small - 16 <= rep[small.name]["rows"] < n_small and rep[small.name]["epochs"] == 1
    assert abs(rep[small.name]["share"] - 0.75) < 0.02
    logged = [json.loads(l) for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert any(f"data/{small.name}/share" in m for m in logged)


@pytest.mark.parametrize("mode", mixing.MIXING_MODES)
def test_new_data_resume_restarts_every_mode(sft, mode):
    """checkpointing.new_data hands the sampler {"epoch": 0, "position": 0, "new_data":
    True}: every mode starts afresh (it used to be refused as a rows-mode checkpoint in
    tokens/bucketed mode, although the refusal names new_data as the way out)."""

    fresh = _sampler(sft["folders"], [1.0, 2.0, 1.0], mode=mode)
    want = [fresh.next_batch() for _ in range(5)]
    s = _sampler(sft["folders"], [1.0, 2.0, 1.0], mode=mode)
    s.load_state_dict({"epoch": 0, "position": 0, "new_data": True})
    assert [s.next_batch() for _ in range(5)] == want
    other = "rows" if mode != "rows" else "tokens"
    with pytest.raises(ConfigError, match=f"data.mixing={other}"):  # without new_data: still refused
        _sampler(sft["folders"], [1.0, 2.0, 1.0], mode=mode).load_state_dict(
            json.loads(json.dumps(_sampler(sft["folders"], [1.0, 2.0, 1.0], mode=other).state_dict())))


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_weight_is_a_config_error(sft, weight):
    with pytest.raises(ConfigError, match="data weights must be > 0 and finite"):
        _sampler(sft["folders"][:2], [1.0, weight])


def test_bucketed_repeat_false_reports_the_first_epoch(sft):
    """Stopping at the end of the only epoch reports epoch 1, not a pass never begun."""
    s = _sampler(sft["folders"], [1.0, 1.0, 1.0], mode="bucketed", repeat=False)
    with pytest.raises(mixing.DataExhausted):
        for _ in range(10_000):
            s.next_batch()
    assert {r["epochs"] for r in s.report().values()} == {1}
    r = _sampler(sft["folders"], [1.0, 1.0, 1.0], mode="rows")
    per = r.batches_per_epoch()
    for _ in range(per):
        r.next_batch()
    assert {v["epochs"] for v in r.report().values()} == {1}
    r.next_batch()
    assert {v["epochs"] for v in r.report().values()} == {2}
