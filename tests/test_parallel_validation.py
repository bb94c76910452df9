"""Pure layout arithmetic and strategy validation (no process group, no torch import
except where a check is about the device)."""

from __future__ import annotations

import pytest

from cptcore.config import load_config
from cptcore.errors import ConfigError
from cptcore.train import parallel
from cptcore.train.plan import validate_strategy

LLAMA = {"num_attention_heads": 8, "num_key_value_heads": 4, "num_hidden_layers": 6}


def test_layout_sizes():
    lay = parallel.make_layout("hybrid3d", 8, tp=2, pp=2)
    assert (lay.dp, lay.tp, lay.pp, lay.sp) == (2, 2, 2, 1)
    assert lay.describe() == "world=8: dp=2 tp=2 pp=2 sp=1"
    a2a = parallel.make_layout("hybrid3d", 8, tp=2, sp=2, sp_mode="all_to_all")
    assert (a2a.dp, a2a.sp) == (2, 2)
    sg = parallel.make_layout("hybrid3d", 4, tp=2, sp_mode="split_gather")
    assert (sg.dp, sg.sp, sg.sp_over_tp) == (2, 1, True)
    assert "sp=2 (in TP group)" in sg.describe()


def test_layout_does_not_divide_message():
    with pytest.raises(ConfigError) as exc:
        parallel.make_layout("hybrid3d", 6, tp=2, pp=2)
    assert str(exc.value) == "hybrid3d: tp(2)·pp(2) = 4 does not divide world size 6"
    with pytest.raises(ConfigError, match=r"tp\(1\)·pp\(1\)·sp\(4\) = 4 does not divide world size 2"):
        parallel.make_layout("hybrid3d", 2, sp=4, sp_mode="all_to_all")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tp": 0}, "tp must be a positive integer"),
        ({"sp": 2}, "needs sequence_parallelism_mode"),
        ({"sp_mode": "zigzag"}, "sequence_parallelism_mode must be one of"),
        ({"sp_mode": "ring"}, "needs tp_size > 1"),
    ],
)
def test_layout_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        parallel.make_layout("hybrid3d", 4, **kwargs)


def test_microbatches():
    assert parallel.check_microbatches("3d", 1, None, 3) == 1
    assert parallel.check_microbatches("3d", 2, None, 4) == 2  # default: pp
    assert parallel.check_microbatches("3d", 2, 4, 8) == 4
    with pytest.raises(ConfigError, match=r"num_microbatches \(1\) must be >= pp_size \(2\)"):
        parallel.check_microbatches("3d", 2, 1, 4)
    with pytest.raises(ConfigError, match=r"micro_batch_size \(3\) must be a multiple of num_microbatches \(2\)"):
        parallel.check_microbatches("3d", 2, None, 3)


def test_model_shape_rules():
    parallel.check_model("3d", LLAMA, tp=4, pp=3)
    parallel.check_model("3d", None, tp=3)  # unknown shape: nothing to check
    with pytest.raises(ConfigError, match="8 attention heads are not divisible by tp\\(3\\)"):
        parallel.check_model("3d", LLAMA, tp=3)
    with pytest.raises(ConfigError, match="4 key/value heads are not divisible by tp\\(8\\)"):
        parallel.check_model("3d", LLAMA, tp=8)
    with pytest.raises(ConfigError, match="6 layers are not divisible by pp\\(4\\)"):
        parallel.check_model("3d", LLAMA, pp=4)
    with pytest.raises(ConfigError, match="not divisible by tp\\(2\\)·sp\\(4\\)"):
        parallel.check_model("3d", LLAMA, tp=2, sp=4, sp_mode="all_to_all")


def test_precision_rule():
    parallel.check_precision("gemini", "bf16", ("bf16", "fp16"))
    with pytest.raises(ConfigError, match="gemini: precision fp32 is not supported \\(why\\); use one of bf16, fp16"):
        parallel.check_precision("gemini", "fp32", ("bf16", "fp16"), "why")


def _validate(cpt_pm, tmp_path, name, world=2, sets=(), model=LLAMA, **over):
    import json

    (tmp_path / "config.json").write_text(json.dumps(model))
    overrides = {"strategy.name": name, "model.path": str(tmp_path), **over}
    config = load_config(None, overrides=overrides, sets=list(sets))
    return validate_strategy(config, cpt_pm, world_size=world)


def test_validate_through_registry(cpt_pm, tmp_path):
    spec, opts = _validate(cpt_pm, tmp_path, "3d", world=8,
                           sets=["strategy.tp_size=2", "strategy.pp_size=2", "strategy.precision=bf16"],
                           **{"training.micro_batch_size": 2})
    assert spec.name == "hybrid3d" and (opts.tp_size, opts.pp_size) == (2, 2)
    spec, opts = _validate(cpt_pm, tmp_path, "zero2_cpu", sets=["strategy.precision=bf16"])
    assert (opts.stage, opts.cpu_offload) == (2, True)
    spec, opts = _validate(cpt_pm, tmp_path, "zero1")
    assert opts.stage == 1
    spec, opts = _validate(cpt_pm, tmp_path, "gemini", sets=["strategy.precision=bf16"])
    assert opts.placement_policy == "static"


def test_lora_enabled_on_gemini_and_hybrid3d_without_tp_pp(cpt_pm, tmp_path):
    """LoRA (and rsLoRA) pass the capability check where they train (tests/test_strategies_torchrun.py)."""
    for name, sets in (("gemini", ["strategy.precision=bf16"]), ("hybrid3d", []), ("zero2", ["strategy.precision=bf16"])):
        _validate(cpt_pm, tmp_path, name, sets=sets, **{"lora.enabled": True, "lora.use_rslora": True})
    _validate(cpt_pm, tmp_path, "ddp", **{"lora.enabled": True, "lora.use_dora": True})


REFUSED = [
    ("hybrid3d", 6, ["strategy.tp_size=2", "strategy.pp_size=2"], {}, "tp(2)·pp(2) = 4 does not divide world size 6"),
    ("hybrid3d", 2, ["strategy.tp_size=2"], {"lora.enabled": True}, "LoRA is not supported: tp_size=2: ColossalAI's"),
    ("hybrid3d", 2, ["strategy.pp_size=2"], {"lora.enabled": True, "training.micro_batch_size": 2},
     "LoRA is not supported: pp_size=2: the LLaMA pipeline policy"),
    ("hybrid3d", 2, [], {"lora.enabled": True, "lora.use_dora": True}, "hybrid3d: DoRA (lora.use_dora) is not supported"),
    ("hybrid3d", 2, ["strategy.pp_size=2"], {"noise.name": "neftune", "training.micro_batch_size": 2},
     "embedding noise (NEFTune) is not supported: with pp_size=2"),
    ("hybrid3d", 2, ["strategy.tp_size=2"], {"noise.name": "neftune"}, "with tp_size=2 each TP rank"),
    ("hybrid3d", 4, ["strategy.pp_size=2", "strategy.zero_stage=2", "strategy.precision=bf16"],
     {"training.micro_batch_size": 2}, "ZeRO stage 0 or 1 with pipeline"),
    ("hybrid3d", 2, ["strategy.zero_stage=1"], {}, "precision fp32 is not supported (ZeRO stage 1 under hybrid"),
    ("hybrid3d", 2, ["strategy.num_microbatches=2"], {}, "num_microbatches is for pipeline parallelism"),
    ("hybrid3d", 2, ["strategy.tp_size=2", "strategy.pp_size=1", "strategy.tp_sizee=2"], {}, "did you mean 'tp_size'"),
    ("gemini", 2, [], {}, "gemini: precision fp32 is not supported"),
    ("gemini", 2, ["strategy.precision=bf16"], {"lora.enabled": True, "lora.use_dora": True},
     "gemini: DoRA (lora.use_dora) is not supported"),
    ("gemini", 2, ["strategy.precision=bf16", "strategy.offload_optim_frac=1.5"], {}, "offload_optim_frac must be within"),
    ("fsdp", 2, [], {"lora.enabled": True}, "TorchFSDPPlugin.enable_lora raises NotImplementedError"),
    ("fsdp", 2, [], {"training.freeze": "non-embeddings"}, "FSDP flat parameters"),
    ("fsdp", 2, ["strategy.precision=fp16"], {}, "fp16 needs FSDP's sharded grad scaler"),
    ("fsdp", 2, ["strategy.sharding_strategy=FULL"], {}, "sharding_strategy must be one of"),
    ("zero2", 2, ["strategy.stage=3"], {}, "stage must be 1 or 2"),
]


@pytest.mark.parametrize("name, world, sets, over, message", REFUSED)
def test_refused_in_one_line(cpt_pm, tmp_path, name, world, sets, over, message):
    with pytest.raises(ConfigError) as exc:
        _validate(cpt_pm, tmp_path, name, world=world, sets=sets, **over)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_cpu_only_refusals(cpt_pm, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CPU-only refusals")
    with pytest.raises(ConfigError, match="placement_policy=auto needs CUDA"):
        _validate(cpt_pm, tmp_path, "gemini_auto", sets=["strategy.precision=bf16"])
    # split_gather runs on CPU through the compat layer (cpu_sp); ring is refused on CPU,
    # all_to_all everywhere (measured reasons); ring_attn needs flash attention
    _validate(cpt_pm, tmp_path, "hybrid3d", sets=["strategy.tp_size=2", "strategy.sequence_parallelism_mode=split_gather"])
    with pytest.raises(ConfigError, match="ring on CPU: its gradients differ from tp-only ones"):
        _validate(cpt_pm, tmp_path, "hybrid3d", sets=["strategy.tp_size=2", "strategy.sequence_parallelism_mode=ring"])
    with pytest.raises(ConfigError, match="all_to_all would train with gradients sp_size times too large"):
        _validate(cpt_pm, tmp_path, "hybrid3d", sets=["strategy.sp_size=2", "strategy.sequence_parallelism_mode=all_to_all"])
    with pytest.raises(ConfigError, match="ring_attn needs enable_flash_attention=true"):
        _validate(cpt_pm, tmp_path, "hybrid3d", sets=["strategy.sp_size=2", "strategy.sequence_parallelism_mode=ring_attn"])
    # accumulation over ranks is allowed (the compat patch fixes Gemini's gathered chunks)
    _validate(cpt_pm, tmp_path, "gemini", sets=["strategy.precision=bf16"], **{"training.accumulation_steps": 2})
