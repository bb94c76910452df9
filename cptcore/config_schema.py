"""What a run config holds: the sections of :class:`RunConfig` as frozen dataclasses,
with their defaults and the per-field normalisation done on construction (named eval
sets, token counts). Loading, merging and type checks are :mod:`cptcore.config`'s."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .eval.sets import named_sets
from .units import parse_count


@dataclass(frozen=True)
class ModelConfig:
    path: str = ""  # Hugging Face folder or .gguf file
    tokenizer: str | None = None  # defaults to the model folder
    dtype: str = "fp32"  # dtype the weights are loaded in: fp32 | bf16 | fp16
    attn_implementation: str = "auto"  # auto | sdpa | eager | flash_attention_2
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False


@dataclass(frozen=True)
class DataConfig:
    train: list[str] = field(default_factory=list)  # prepared folders, "PATH[:WEIGHT]"
    # named held-out prepared folders {NAME: PATH}; a list of "NAME=PATH" or "PATH" (named
    # after its folder) is accepted and normalised (cptcore.eval.sets.named_sets)
    eval: dict[str, str] | list[str] = field(default_factory=dict)
    # named multiple-choice JSONL files {NAME: FILE} scored at step 0 and every eval
    # (--eval-mc NAME=FILE; cptcore.eval.mc); names shared with data.eval are refused
    eval_mc: dict[str, str] | list[str] = field(default_factory=dict)
    shuffle: bool = True
    num_workers: int = 0
    # rows (weights = row shares, the default) | tokens (weights = label-token shares) |
    # bucketed (Colossal-LLaMA-2 buckets); see cptcore.recipes.mixing and docs/data.md "Mixing"
    mixing: str = "rows"
    repeat: bool = True  # false: a used-up source stops the run (per source: PATH:WEIGHT:norepeat)
    buckets: int = 10  # bins per source with mixing: bucketed

    def __post_init__(self) -> None:
        object.__setattr__(self, "eval", named_sets(self.eval, "data.eval"))
        object.__setattr__(self, "eval_mc", named_sets(self.eval_mc, "data.eval_mc", file=True))
        if self.mixing not in ("rows", "tokens", "bucketed"):
            raise ConfigError(f"data.mixing must be rows, tokens or bucketed, got {self.mixing!r}")
        if isinstance(self.buckets, bool) or not isinstance(self.buckets, int) or self.buckets < 1:
            raise ConfigError(f"data.buckets must be an integer >= 1, got {self.buckets!r}")


@dataclass(frozen=True)
class StrategyConfig:
    name: str = "ddp"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (ColossalAI's argument name)
    options: dict[str, Any] = field(default_factory=dict)  # checked by the strategy plugin


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1  # not applied to norms, biases and (by default) embedding rows
    # true: input/output embedding matrices are decayed too (cptcore < 0.3; docs/stages.md)
    embedding_weight_decay: bool = False
    grad_clip: float = 1.0  # max global gradient L2 norm; 0 disables


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "cosine"  # a schedule of the registry (cpt schedules): cosine | constant | wsd | rewarm | plugins'
    warmup_steps: int = 0  # linear warm-up to lr, in optimizer steps
    min_lr_ratio: float = 0.1  # the decaying schedules end at lr * min_lr_ratio
    options: dict[str, Any] = field(default_factory=dict)  # checked by the schedule plugin


@dataclass(frozen=True)
class TrainingConfig:
    out_dir: str = "runs/default"
    # the run's length: at most one of max_steps / epochs / max_tokens (none: 100 steps);
    # the precheck resolves epochs and max_tokens to max_steps (docs/training.md#run-length)
    max_steps: int | None = None  # optimizer steps
    epochs: float | None = None  # passes over the mixture (manifest rows, weights applied)
    max_tokens: int | str | None = None  # training tokens (row positions); "2M", "1.5B" accepted (an int after loading)
    max_shard_size: str = "2GB"  # safetensors shard size of exported folders (HF syntax: "500MB", "5GB")
    micro_batch_size: int = 1  # sequences per rank per forward/backward
    accumulation_steps: int = 1  # micro-batches per optimizer step
    global_batch_tokens: int | None = None  # if set, accumulation is derived from it
    seed: int = 42
    freeze: str = "none"  # none | non-embeddings (= trainable: embeddings)
    # all | embeddings | new_rows | non_embeddings | lora | [glob patterns of parameter
    # names] | {new_rows_from: N} (cptcore.recipes.trainable; docs/stages.md)
    trainable: str | list[str] | dict[str, Any] = "all"
    eval_every: int = 0  # optimizer steps; 0 = only at the end
    eval_batches: int | None = None  # cap on eval micro-batches; None = all
    objective: str = "causal_lm"  # training objective (cpt objectives)
    objective_options: dict[str, Any] = field(default_factory=dict)  # checked by the objective plugin
    peak_flops: float | None = None  # dense FLOP/s of one device for MFU; None = table (GPU) / measured (CPU)

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, str):
            object.__setattr__(self, "max_tokens", parse_count(self.max_tokens, "training.max_tokens"))


@dataclass(frozen=True)
class CheckpointingConfig:
    save_every: int = 0  # optimizer steps; 0 = only at the end
    keep_last: int = 2
    resume: str | None = None  # None | "auto" | path to a checkpoint folder
    new_data: bool = False  # resume on different training data: its sampler starts at its beginning


@dataclass(frozen=True)
class LoggingConfig:
    loggers: list[str] = field(default_factory=lambda: ["tensorboard", "jsonl"])
    log_every: int = 1
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # logger name -> its options (checked by the logger)


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    train_embeddings: bool = False
    merge_on_export: bool = True
    use_rslora: bool = False  # peft: scale alpha/sqrt(r) instead of alpha/r (Kalajdzievski 2023)
    use_dora: bool = False  # peft: weight-decomposed LoRA (Liu et al. 2024); ddp/zero only


@dataclass(frozen=True)
class NoiseConfig:
    name: str | None = None  # e.g. "neftune"; None = no noise
    options: dict[str, Any] = field(default_factory=dict)  # checked by the noise plugin


@dataclass(frozen=True)
class EvalConfig:
    # NAME -> largest allowed bpb increase over step 0 on that retained set (bits/byte)
    budget: dict[str, float] = field(default_factory=dict)
    on_budget: str = "warn"  # warn | stop | keep_best (checked against data.eval on load)
    mc_loglik: bool = True  # data.eval_mc: also the loglik scores (one forward per choice); False: letter only


@dataclass(frozen=True)
class PluginsConfig:
    # plugin .py files the run loaded (cpt --plugin), recorded as {"path": absolute,
    # "sha256": hex}; a --config naming them loads them, a resume checks them against --plugin
    files: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    checkpointing: CheckpointingConfig = field(default_factory=CheckpointingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    # multi-stage recipe (cptcore.recipes.stages; docs/stages.md); absent = one implicit stage
    # (an explicit empty list is refused by cptcore.config.build_config)
    stages: list[dict[str, Any]] = field(default_factory=list)
    # dotted key -> where its value came from ("run.yaml", "--set", "--lr"); not dumped
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (plugin options flattened into their section)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "sources":
                continue
            if f.name == "stages":  # a list of override mappings; absent when empty (today's config.yaml)
                if self.stages:
                    out["stages"] = [dict(s) for s in self.stages]
                continue
            section = dataclasses.asdict(getattr(self, f.name))
            if f.name in _OPEN_SECTIONS:
                section.update(section.pop("options", None) or {})
            out[f.name] = section
        return out

    def source(self, dotted: str) -> str:
        return self.sources.get(dotted, "default")


# Sections whose unknown keys are plugin options rather than errors.
_OPEN_SECTIONS = {"strategy", "noise", "schedule"}
