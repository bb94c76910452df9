"""Fast unit tests of the training engine pieces (no process group)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cptcore.errors import ConfigError, CptError
from cptcore.train import data as tdata
from cptcore.train.optim import param_groups


# ------------------------------------------------------------------ optimizer and schedule
def test_param_groups_no_decay_on_norms_and_biases():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4, bias=True)
            self.norm = torch.nn.LayerNorm(4)
            self.frozen = torch.nn.Linear(4, 4)
            self.frozen.requires_grad_(False)

    groups = param_groups(M(), 0.1)
    assert groups[0]["weight_decay"] == 0.1 and groups[0]["names"] == ["lin.weight"]
    assert groups[1]["weight_decay"] == 0.0
    assert groups[1]["names"] == ["lin.bias", "norm.weight", "norm.bias"]


def test_param_groups_nothing_trainable():
    m = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        param_groups(m, 0.1)


def test_cosine_schedule_with_warmup_to_min():
    from cptcore.recipes.schedules import constant, cosine

    f = cosine(warmup_steps=2, max_steps=10, min_lr_ratio=0.1)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(10) == pytest.approx(0.1)
    assert f(50) == pytest.approx(0.1)
    assert constant(0, 5, 0.1)(3) == 1.0
    with pytest.raises(ConfigError, match="warmup_steps"):
        cosine(20, 10, 0.1)


# ------------------------------------------------------------------ masks and padding
def test_block_causal_mask_exact():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0]])
    m = tdata.block_causal_mask(pos, torch.float32)
    allowed = (m[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]
    assert m.shape == (1, 1, 6, 6) and m.min().item() == torch.finfo(torch.float32).min


def test_real_length_excludes_trailing_pad_span_only():
    ids = np.array([5, 6, 7, 9, 9, 9])
    lab = np.array([5, 6, 7, -100, -100, -100])
    pos = np.array([0, 1, 2, 0, 1, 2])
    assert tdata.real_length(ids, lab, pos, pad_id=9) == 3
    # a real final document made of other ids is counted
    assert tdata.real_length(np.array([5, 6, 7, 8]), np.array([5, 6, 7, 8]), np.array([0, 1, 0, 1]), 9) == 4


def test_collate_pads_and_separates():
    rows = [
        {"input_ids": np.array([1, 2, 3]), "labels": np.array([1, 2, 3]), "position_ids": np.array([0, 1, 0])},
        {"input_ids": np.array([4]), "labels": np.array([-100]), "position_ids": np.array([0])},
    ]
    b = tdata.collate(rows, pad_id=0, block_mask=True)
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert b["labels"].tolist() == [[1, 2, 3], [-100, -100, -100]]
    assert b["position_ids"].tolist() == [[0, 1, 0], [0, 0, 0]]
    assert b["lengths"].tolist() == [3, 1]
    allowed = (b["attention_mask"][1, 0] == 0).int().tolist()
    assert allowed == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_packed_row_logits_equal_separate_documents(tmp_path, smollm2_tokenizer_dir):
    """Documents packed in one row with restarting position_ids and the block mask give
    the same logits as each document alone (no cross-document attention)."""
    from transformers import AutoModelForCausalLM

    from cptcore.testing import make_tiny_llama

    make_tiny_llama(tmp_path, vocab_size=50)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    a, b = torch.tensor([[3, 4, 5, 6]]), torch.tensor([[7, 8, 9]])
    packed = torch.cat([a, b], 1)
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    mask = tdata.block_causal_mask(pos, torch.float32)
    with torch.no_grad():
        joint = model(input_ids=packed, position_ids=pos, attention_mask=mask).logits
        la = model(input_ids=a).logits
        lb = model(input_ids=b).logits
        leaky = model(input_ids=packed, position_ids=pos).logits
    torch.testing.assert_close(joint[:, :4], la, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(joint[:, 4:], lb, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leaky[:, 4:], lb, atol=1e-3)  # without the mask documents leak


# ------------------------------------------------------------------ sampler
class _FakeDs(list):
    pass


def _mixed(lengths, weights):
    return tdata.MixedDataset([_FakeDs(range(n)) for n in lengths], weights)


def test_sampler_ranks_disjoint_and_complete():
    data = _mixed([10], [1.0])
    seen = []
    for rank in range(2):
        s = tdata.MixedSampler(data, 2, dp_size=2, dp_rank=rank, seed=3)
        assert s.batches_per_epoch() == 2
        for _ in range(2):
            seen += [r for _, r in s.next_batch()[0]]
    assert len(seen) == 8 and len(set(seen)) == 8


def test_sampler_mixing_weights():
    data = _mixed([100, 100], [3.0, 1.0])
    plan = tdata.MixedSampler(data, 1, 1, 0, seed=0).plan(0)
    counts = np.bincount(plan[:, 0])
    assert counts.tolist() == [150, 50]
    per_row = np.bincount(plan[plan[:, 0] == 0][:, 1], minlength=100)
    assert per_row.min() == 1 and per_row.max() == 2  # a full pass before any repeat
    assert len(set(plan[plan[:, 0] == 1][:, 1].tolist())) == 50  # down-sampled without repeats


def test_sampler_resume_skips_exactly_and_only_once():
    """Fault of the anchors: resume skipping the wrong number of batches, or the skip
    repeated in later epochs."""
    data = _mixed([7], [1.0])
    ref = tdata.MixedSampler(data, 2, 1, 0, seed=1)
    full = [ref.next_batch() for _ in range(10)]  # 3 per epoch -> spans 4 epochs
    a = tdata.MixedSampler(data, 2, 1, 0, seed=1)
    for _ in range(4):
        a.next_batch()
    state = a.state_dict()
    assert state["epoch"] == 1 and state["position"] == 1
    b = tdata.MixedSampler(data, 2, 1, 0, seed=1)
    b.load_state_dict(state)
    rest = [b.next_batch() for _ in range(6)]
    assert rest == full[4:]
    assert [last for _, last in full] == [False, False, True] * 3 + [False]


def test_sampler_refuses_other_layout():
    s = tdata.MixedSampler(_mixed([7], [1.0]), 2, 1, 0, seed=1)
    with pytest.raises(ConfigError, match="dp_size=2"):
        s.load_state_dict({"epoch": 0, "position": 1, "dp_size": 2, "micro_batch_size": 2, "seed": 1})


def test_parse_source():
    assert tdata.parse_source("a/b:0.5") == tdata.Source(__import__("pathlib").Path("a/b"), 0.5)
    assert tdata.parse_source("c:/x").weight == 1.0
    with pytest.raises(ConfigError):
        tdata.parse_source("a:0")


# ------------------------------------------------------------------ loss
def test_token_loss_sum_matches_hf_mean_times_count():
    from cptcore.train.strategy import count_label_tokens, token_loss_sum

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[1, 2, -100, 4, 5], [-100, -100, 3, 3, -100]])
    n = count_label_tokens(labels)
    assert n == 5
    mean = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(token_loss_sum(logits, labels) / n, mean)


# ------------------------------------------------------------------ launch and checkpoints
def test_torchrun_argv_strips_launcher_flags():
    from cptcore.train.launch import torchrun_argv

    cmd = torchrun_argv(["train", "--config", "r.yaml", "--nproc-per-node", "2", "--nnodes=1", "--max-steps", "3"],
                        2, master_port=1234)
    assert cmd[-6:] == ["cptcore.cli.main", "train", "--config", "r.yaml", "--max-steps", "3"]
    assert "--nproc-per-node=2" in cmd and "--master-port=1234" in cmd
    multi = torchrun_argv(["train"], 8, nnodes=2, node_rank=1, master_addr="10.0.0.1")
    assert "--master-port=29500" in multi and "--node-rank=1" in multi and "--master-addr=10.0.0.1" in multi
    with pytest.raises(ConfigError, match="--master-addr"):
        torchrun_argv(["train"], 2, nnodes=2, node_rank=1)


def test_fingerprint_changes_with_plugins(cpt_pm):
    from cptcore.plugins import make_plugin_manager
    from cptcore.train.launch import plugin_fingerprint

    class Extra:
        pass

    a = plugin_fingerprint(cpt_pm)
    assert a == plugin_fingerprint(make_plugin_manager(entrypoints=False))
    assert a != plugin_fingerprint(make_plugin_manager(entrypoints=False, extra=[Extra()]))


def test_validate_checkpoint_partial_and_corrupt(tmp_path):
    from cptcore.train.checkpoint import list_checkpoints, resolve_resume, validate_checkpoint

    ck = tmp_path / "checkpoints"
    (ck / "step-4.tmp" / "model").mkdir(parents=True)  # interrupted save
    assert list_checkpoints(tmp_path) == [] and resolve_resume("auto", tmp_path) is None
    with pytest.raises(CptError, match="incomplete checkpoint .no trainer_state.json"):
        validate_checkpoint(ck / "step-4.tmp")
    with pytest.raises(CptError, match="checkpoint not found"):
        validate_checkpoint(ck / "step-9")
    bad = ck / "step-2"
    bad.mkdir()
    (bad / "trainer_state.json").write_text("{not json")
    with pytest.raises(CptError, match="corrupt trainer state"):
        validate_checkpoint(bad)
    (bad / "trainer_state.json").write_text('{"step": 2, "world_size": 1}')
    with pytest.raises(CptError, match="corrupt trainer state .no 'micro_batches' entry"):
        validate_checkpoint(bad)
    (bad / "trainer_state.json").write_text(json.dumps({"step": 2, "world_size": 1, "micro_batches": 2, "tokens_seen": 9,
                                                        "sampler": {"epoch": 0, "position": 2}}))
    with pytest.raises(CptError, match="missing model"):
        validate_checkpoint(bad)


# ------------------------------------------------------------------ model loading and batch size
def test_attention_choice_on_cpu():
    from cptcore.model.load import choose_attention

    impl, why = choose_attention("auto")
    if not torch.cuda.is_available():
        assert impl == "sdpa" and "block-diagonal" in why
        with pytest.raises(ConfigError, match="flash_attention_2 needs"):
            choose_attention("flash_attention_2")
    assert choose_attention("eager") == ("eager", "as configured")
    with pytest.raises(ConfigError, match="unknown 'fast'"):
        choose_attention("fast")


def test_gguf_imported_once_into_cache(tmp_path, monkeypatch):
    from cptcore.model import load

    calls = []

    def fake_import(path, out, overwrite=False):
        calls.append(path)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")
        (out / "tokenizer.json").write_text("{}")
        return out

    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("cptcore.model.gguf.import_gguf", fake_import)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    a = load.resolve_hf_folder(str(gguf))
    b = load.resolve_hf_folder(str(gguf))
    assert a == b and a.parent == tmp_path / "cache" / "gguf" and len(calls) == 1
    bad = tmp_path / "m.bin"
    bad.write_text("x")
    with pytest.raises(ConfigError, match="is not a .gguf file"):
        load.check_model_path(str(bad))


def test_trust_remote_code_off_unless_asked(tmp_path, monkeypatch):
    from cptcore.config import ModelConfig
    from cptcore.model import load
    from cptcore.testing import make_tiny_llama

    make_tiny_llama(tmp_path, vocab_size=40)
    seen = {}
    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    model = load.load_model(ModelConfig(path=str(tmp_path), gradient_checkpointing=True), log=lambda m: None)
    assert seen["trust_remote_code"] is False and seen["attn_implementation"] in ("sdpa", "flash_attention_2")
    assert model.is_gradient_checkpointing


def test_global_batch_tokens_sets_accumulation():
    from cptcore.config import load_config
    from cptcore.train.build import accumulation_steps

    cfg = load_config(None, overrides={"training.global_batch_tokens": 10000, "training.micro_batch_size": 2})
    assert accumulation_steps(cfg, seq_len=1024, dp_size=2) == 3  # ceil(10000 / 4096)
    assert accumulation_steps(load_config(None, overrides={"training.accumulation_steps": 5}), 1024, 2) == 5
    with pytest.raises(ConfigError, match="needs max_length"):
        accumulation_steps(cfg, seq_len=None, dp_size=1)


def test_lora_train_embeddings_and_freeze(tmp_path):
    from transformers import AutoModelForCausalLM

    from cptcore.builtin_plugins.lora import add_lora
    from cptcore.config import LoraConfig
    from cptcore.testing import make_tiny_llama
    from cptcore.train.build import apply_freeze

    make_tiny_llama(tmp_path, vocab_size=40)
    m = add_lora(AutoModelForCausalLM.from_pretrained(tmp_path), LoraConfig(enabled=True, train_embeddings=True))
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in names) and any("embed_tokens.modules_to_save" in n for n in names)
    with pytest.raises(ConfigError, match="match no module"):
        add_lora(AutoModelForCausalLM.from_pretrained(tmp_path), LoraConfig(enabled=True, target_modules=["qkv"]))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert apply_freeze(plain, "non-embeddings") == 40 * 64
    assert [n for n, p in plain.named_parameters() if p.requires_grad] == ["model.embed_tokens.weight"]


def test_interrupted_save_leftovers_are_removed(tmp_path):
    """A later complete save removes ``step-*.tmp`` folders left by killed saves."""
    from cptcore.config import RunConfig
    from cptcore.train.checkpoint import list_checkpoints, save_checkpoint

    class FakeStrategy:
        def save(self, d, model, opt, sched):
            for sub in ("model", "optimizer"):
                (d / sub).mkdir()
            (d / "lr_scheduler.pt").write_text("x")

    from cptcore.train.runlock import acquire

    (tmp_path / "checkpoints" / "step-1.tmp").mkdir(parents=True)
    with acquire(tmp_path):  # cpt train holds the run lock: only then are .tmp folders ours to remove
        path = save_checkpoint(tmp_path, 2, FakeStrategy(), None, None, None, {"sampler": {}}, RunConfig(), keep_last=2)
    assert list_checkpoints(tmp_path) == [path]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2"]
    assert (path / "checksums.sha256").is_file()
    assert json.loads((path / "trainer_state.json").read_text())["step"] == 2


def test_one_process_group_leaves_no_rank_variables_behind(monkeypatch):
    """An in-process run (``cpt train`` as a library call) creates a one-process group;
    afterwards the process must not look like one of torchrun's ranks, or a later
    ``cpt train --nproc-per-node 2`` from it runs as a single rank of world size 1."""
    import os

    import torch.distributed as dist

    from cptcore.train.launch import process_group

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with process_group(0) as (rank, world):
        assert (rank, world) == (0, 1) and os.environ["WORLD_SIZE"] == "1" and dist.is_initialized()
    assert not dist.is_initialized()
    assert not {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} & set(os.environ)


def test_lora_dora_and_rslora_reach_peft(tmp_path):
    """``lora.use_dora`` / ``lora.use_rslora`` from the run config end up in peft's config
    and model: DoRA adds a trainable magnitude vector per adapted layer; rsLoRA scales
    by alpha / sqrt(r) instead of alpha / r."""
    from transformers import AutoModelForCausalLM

    from cptcore.builtin_plugins.lora import add_lora
    from cptcore.config import load_config
    from cptcore.testing import make_tiny_llama

    make_tiny_llama(tmp_path, vocab_size=40)
    cfg = load_config(None, sets=["lora.enabled=true", "lora.use_dora=true", "lora.r=4", "lora.alpha=8"]).lora
    dora = add_lora(AutoModelForCausalLM.from_pretrained(tmp_path), cfg)
    assert dora.peft_config["default"].use_dora is True and dora.peft_config["default"].use_rslora is False
    magnitudes = [n for n, p in dora.named_parameters() if "lora_magnitude_vector" in n and p.requires_grad]
    assert len(magnitudes) == 2 * 4  # 2 layers x q,k,v,o
    q = dora.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == 8 / 4
    cfg = load_config(None, sets=["lora.enabled=true", "lora.use_rslora=true", "lora.r=4", "lora.alpha=8"]).lora
    rs = add_lora(AutoModelForCausalLM.from_pretrained(tmp_path), cfg)
    assert rs.peft_config["default"].use_rslora is True
    assert not any("lora_magnitude_vector" in n for n, _ in rs.named_parameters())
    assert rs.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == 8 / 4**0.5
    with pytest.raises(ConfigError, match="lora.use_dora"):
        load_config(None, sets=["lora.use_dora=sometimes"])
