import dataclasses

import pytest

from cptcore.config import RunConfig, load_config, parse_options, parse_set, write_resolved
from cptcore.errors import ConfigError


def _yaml(tmp_path, text, name="run.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults():
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.strategy.name == "ddp"
    assert cfg.training.micro_batch_size == 1


def test_yaml_then_flags_then_set(tmp_path):
    p = _yaml(tmp_path, "training:\n  max_steps: 5\n  seed: 7\noptimizer:\n  lr: 1e-4\n")
    cfg = load_config(p, overrides={"training.max_steps": 9, "training.seed": None}, sets=["training.max_steps=11"])
    assert cfg.training.max_steps == 11
    assert cfg.training.seed == 7  # None flag does not override
    assert cfg.optimizer.lr == pytest.approx(1e-4)  # "1e-4" (a YAML string) read as a float
    assert cfg.source("training.max_steps") == "--set training.max_steps=11"
    assert cfg.source("training.seed") == str(p)


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    p = _yaml(tmp_path, "training:\n  max_stpes: 5\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}: unknown config key 'training.max_stpes'; did you mean 'max_steps'?")


def test_unknown_section(tmp_path):
    p = _yaml(tmp_path, "trainig:\n  max_steps: 5\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'trainig'; did you mean 'training'\?"):
        load_config(p)


def test_wrong_type_names_key_and_file(tmp_path):
    p = _yaml(tmp_path, "training:\n  max_steps: lots\n")
    with pytest.raises(ConfigError, match=rf"^{p}: training.max_steps: expected an integer, got str 'lots'$"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"--set lora.enabled=maybe: lora.enabled: expected true/false"):
        load_config(sets=["lora.enabled=maybe"])


def test_section_must_be_mapping(tmp_path):
    p = _yaml(tmp_path, "training: 5\n")
    with pytest.raises(ConfigError, match="'training' must be a mapping"):
        load_config(p)


def test_yaml_syntax_error_names_line(tmp_path):
    p = _yaml(tmp_path, "training:\n  max_steps: [1,\n")
    with pytest.raises(ConfigError, match=rf"^{p}:\d+: invalid YAML"):
        load_config(p)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_plugin_options_kept_for_open_sections(tmp_path):
    p = _yaml(tmp_path, "strategy:\n  name: hybrid3d\n  tp_size: 2\n  precision: bf16\nnoise:\n  name: neftune\n  alpha: 5\n")
    cfg = load_config(p, sets=["strategy.pp_size=2"])
    assert cfg.strategy.name == "hybrid3d"
    assert cfg.strategy.precision == "bf16"
    assert cfg.strategy.options == {"tp_size": 2, "pp_size": 2}
    assert cfg.noise.options == {"alpha": 5}


@dataclasses.dataclass(frozen=True)
class HybridOptions:
    tp_size: int = 1
    pp_size: int = 1
    zero_stage: int = 0


def test_parse_options_validates_against_plugin_class(tmp_path):
    p = _yaml(tmp_path, "strategy:\n  name: hybrid3d\n  tp_sise: 2\n")
    cfg = load_config(p)
    with pytest.raises(ConfigError) as exc:
        parse_options(HybridOptions, cfg.strategy.options, owner="strategy 'hybrid3d'", config=cfg, section="strategy")
    assert str(exc.value).startswith(
        f"{p}: unknown option for strategy 'hybrid3d' 'strategy.tp_sise'; did you mean 'tp_size'?"
    )
    cfg = load_config(sets=["strategy.tp_size=two"])
    with pytest.raises(ConfigError, match="--set strategy.tp_size=two: strategy.tp_size: expected an integer"):
        parse_options(HybridOptions, cfg.strategy.options, owner="strategy 'hybrid3d'", config=cfg, section="strategy")
    ok = parse_options(HybridOptions, {"tp_size": "2"}, owner="x")
    assert ok == HybridOptions(tp_size=2)


def test_parse_options_none_class_rejects_values():
    assert parse_options(None, {}, owner="noise 'x'") is None
    with pytest.raises(ConfigError, match="noise 'x' takes no options, got 'alpha'"):
        parse_options(None, {"alpha": 1}, owner="noise 'x'")


def test_parse_set():
    assert parse_set("training.max_steps=3") == ("training.max_steps", 3)
    assert parse_set("lora.target_modules=[q_proj, v_proj]") == ("lora.target_modules", ["q_proj", "v_proj"])
    assert parse_set("model.path=a=b") == ("model.path", "a=b")
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_set("max_steps")


def test_list_from_comma_string():
    cfg = load_config(overrides={"logging.loggers": "jsonl,tensorboard"})
    assert cfg.logging.loggers == ["jsonl", "tensorboard"]


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(sets=["strategy.tp_size=2", "training.max_steps=3", "noise.name=neftune"])
    path = write_resolved(cfg, tmp_path / "out")
    again = load_config(path)
    assert again == cfg
    assert "tp_size: 2" in path.read_text()
