"""``llmtune estimate``: what a run costs before it starts (parameters, memory per GPU, compute).

The command side: it resolves what to estimate from a recipe or flags (:func:`resolve`), reads the
model's config (:func:`load_model_config`, config.json only) and builds the model on the meta
device (:func:`meta_model`: no weights read or allocated, so the parameter count is the model's
own), then hands them to the cost model (:mod:`llmtune.costmodel`, the formulas) and prints its
figures as a table (:func:`run_estimate`).

Module level stays torch-free; torch/transformers/accelerate are imported by the functions that
build a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from llmtune.costmodel import (
    CHINCHILLA_TOKENS_PER_PARAM,
    GIB,
    GPU,
    PRECISIONS,
    SHARDINGS,
    Setup,
    activation_bytes,
    arch_from_config,
    budget_optimal,
    compute_optimal_tokens,
    count_parameters,
    first_attr,
    fitting_knobs,
    get_gpu,
    memory,
    require_positive,
    train_seconds,
    training_flops,
)
from llmtune.errors import LlmtuneError

# ---------------------------------------------------------------------------------------------
# the model: its config, and a build on the meta device for the cost model to count


def load_model_config(
    model: str | None = None,
    model_config: str | None = None,
    trust_remote_code: bool = False,
    vocab_size: int | None = None,
) -> Any:
    """A ``transformers`` config for --model (Hub id or folder: config.json only) or
    --model-config (size preset, config.json, Hub config name)."""
    from llmtune.config import ModelArgs
    from llmtune.modeling import model_architecture, model_location, prepare_hub_access

    if model:
        from transformers import AutoConfig

        location = model_location(model)
        prepare_hub_access(location)
        try:
            config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            from llmtune.modeling import hub_error

            raise hub_error("model config", model, exc) from exc
    else:
        prepare_hub_access(model_config)
        config = model_architecture(ModelArgs(config=model_config, trust_remote_code=trust_remote_code))
    if vocab_size is not None:
        require_positive(vocab_size, "--vocab-size")
        config.vocab_size = int(vocab_size)
    return config


def meta_model(config: Any, auto_class: str, trust_remote_code: bool = False, **head: Any) -> Any:
    """The model built on the meta device: shapes only, no memory for weights."""
    import transformers
    from accelerate import init_empty_weights

    for key, value in head.items():
        setattr(config, key, value)
    cls = getattr(transformers, auto_class)
    try:
        with init_empty_weights(include_buffers=True):
            return cls.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LlmtuneError(f"cannot build a {auto_class} from this '{config.model_type}' config: {text}") from exc


# ---------------------------------------------------------------------------------------------
# the command: resolve what to estimate, then print it


@dataclass
class Request:
    model: str | None = None
    model_config: str | None = None
    recipe: str | None = None
    sets: list[str] | None = None
    task: str | None = None
    seq_len: int | None = None
    batch_size: int | None = None
    precision: str | None = None
    gpu: str = "h100"
    gpus: int = 1
    sharding: str = "ddp"
    gradient_checkpointing: bool | None = None
    tokens: float | None = None
    mfu: float = 0.4
    gpu_hours: float | None = None
    lora_r: int | None = None
    lora_targets: list[str] | None = None
    vocab_size: int | None = None
    trust_remote_code: bool = False


@dataclass
class Target:
    """What the request resolves to: a config, the class to build, and the run's shape."""

    config: Any
    auto_class: str
    label: str
    lm_head: bool
    train_head: bool
    seq_len: int
    batch_size: int
    precision: str
    checkpointing: bool
    tokens: float | None
    notes: list[str] = field(default_factory=list)
    lora_r: int | None = None
    lora_targets: list[str] | None = None


def _precision(value: str) -> str:
    value = value.strip().lower()
    if value == "auto":  # train.precision auto: bf16 mixed precision on a GPU that has it
        return "mixed"
    if value == "auto":  # train.precision auto: bf16 mixed precision on the GPUs estimate plans for
        return "mixed"
    if value not in PRECISIONS:
        raise LlmtuneError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{value}'")
    return "mixed" if value in ("bf16", "fp16") else value


def _class_for(config: Any, task_name: str | None) -> tuple[str, bool, bool]:
    """(auto class, whether the loss is over a vocabulary, whether a task head is trained)."""
    from llmtune.presets import DECODER_TYPES, ENCODER_TYPES

    if task_name:
        from llmtune.tasks import get_task

        task = get_task(task_name)
        lm = task.family in ("lm", "sft") or "LM" in task.auto_model
        return task.auto_model, lm, not lm
    archs = getattr(config, "architectures", None) or []
    if archs:
        name = archs[0]
        return name, name.endswith(("LMHeadModel", "ForCausalLM", "ForMaskedLM", "ForConditionalGeneration")), False
    if config.model_type in ENCODER_TYPES:
        return "AutoModelForMaskedLM", True, False
    if config.model_type in DECODER_TYPES:
        return "AutoModelForCausalLM", True, False
    return "AutoModelForCausalLM", True, False


def _tokenizer_vocab(spec: str | None) -> int | None:
    """len(tokenizer) when the recipe's tokenizer is on this machine (as the runner sizes the model)."""
    if not spec:
        return None
    from pathlib import Path

    from llmtune.paths import resolve_location

    location = Path(resolve_location(spec)).expanduser()
    if not location.is_dir():
        return None
    from transformers import AutoTokenizer

    try:
        return len(AutoTokenizer.from_pretrained(str(location)))
    except (OSError, ValueError):
        return None


def resolve(req: Request) -> Target:
    given = [x for x in (req.model, req.model_config, req.recipe) if x]
    if len(given) > 1:
        raise LlmtuneError("pass one of --model, --model-config or --recipe")
    for value, flag in ((req.seq_len, "--seq-len"), (req.batch_size, "--batch-size"), (req.gpus, "--gpus"),
                        (req.tokens, "--tokens"), (req.gpu_hours, "--gpu-hours"), (req.lora_r, "--lora-r"),
                        (req.vocab_size, "--vocab-size")):  # fmt: skip
        require_positive(value, flag)
    if not 0 < req.mfu <= 1:
        raise LlmtuneError(f"--mfu must be in (0, 1], got {req.mfu:g}")
    notes: list[str] = []
    task_name = req.task
    seq_len, batch, precision, ckpt, tokens = (
        req.seq_len,
        req.batch_size,
        req.precision,
        req.gradient_checkpointing,
        req.tokens,
    )
    vocab = req.vocab_size
    if req.recipe:
        from llmtune.resolve import load_config

        cfg = load_config(recipe=req.recipe, sets=req.sets)
        task_name = task_name or cfg.task
        model, model_config = cfg.model.name_or_path, cfg.model.config
        options = cfg.options
        seq_len = seq_len or getattr(options, "block_size", None) or cfg.data.max_length
        batch = batch or cfg.train.batch_size
        precision = precision or cfg.train.precision
        ckpt = cfg.train.gradient_checkpointing if ckpt is None else ckpt
        if tokens is None and cfg.train.max_steps > 0:
            tokens = (
                cfg.train.max_steps * cfg.train.batch_size * cfg.train.gradient_accumulation_steps * seq_len * req.gpus
            )
            notes.append(f"tokens: {cfg.train.max_steps} steps x {cfg.train.batch_size} x "
                         f"{cfg.train.gradient_accumulation_steps} accumulation x {seq_len} x {req.gpus} GPU(s)")  # fmt: skip
        if model_config and vocab is None:
            vocab = _tokenizer_vocab(cfg.model.tokenizer)
            if vocab is None:
                notes.append(
                    f"vocabulary: the config's default (tokenizer {cfg.model.tokenizer} not found; --vocab-size N)"
                )
        label = f"recipe {req.recipe}: {model or model_config}"
        config = load_model_config(model, model_config, cfg.model.trust_remote_code, vocab)
        if req.lora_r is None and cfg.peft.method in ("lora", "dora"):  # the recipe's adapters
            req = replace(req, lora_r=cfg.peft.r, lora_targets=_peft_targets(cfg.peft.target_modules, config))
            notes.append(f"adapters: the recipe's peft section ({cfg.peft.method}, r={cfg.peft.r})")
    elif req.model or req.model_config:
        config = load_model_config(req.model, req.model_config, req.trust_remote_code, vocab)
        label = req.model or req.model_config or ""
    else:
        raise LlmtuneError("nothing to estimate: pass --model, --model-config or --recipe (or --gpu-hours alone)")
    if hasattr(config, "vocab_size") and config.vocab_size is None:
        raise LlmtuneError(
            f"the '{config.model_type}' config has no vocabulary size (it comes from the data, e.g. CTC characters): "
            "pass --vocab-size N"
        )
    auto_class, lm_head, train_head = _class_for(config, task_name)
    return Target(
        config=config,
        auto_class=auto_class,
        label=str(label),
        lm_head=lm_head,
        train_head=train_head,
        seq_len=int(
            seq_len
            or min(
                2048, getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
            )
        ),
        batch_size=int(batch or 8),
        precision=_precision(precision or "bf16"),
        checkpointing=bool(ckpt),
        tokens=tokens,
        notes=notes,
        lora_r=req.lora_r,
        lora_targets=req.lora_targets,
    )


def _peft_targets(targets: list[str] | None, config: Any) -> list[str] | None:
    """The module names a peft section adapts (None: every linear layer but the output layer)."""
    if targets and "all-linear" not in targets:
        return list(targets)
    if targets is None:  # peft's default for the architecture, when peft knows it
        try:
            from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults
        except ImportError:
            return None
        found = defaults.get(getattr(config, "model_type", ""))
        return list(found) if found else None
    return None


def _gib(value: float) -> str:
    return f"{value / GIB:,.2f}"


def _count(n: float) -> str:
    for threshold, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= threshold:
            return f"{n / threshold:.2f}{suffix}"
    return f"{n:.0f}"


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    if hours < 1:
        return f"{seconds / 60:.1f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


PRECISION_TEXT = {
    "fp32": "fp32",
    "mixed": "bf16/fp16 mixed precision (fp32 weights, 16-bit activations)",
    "pure-bf16": "pure bf16 (bf16 weights, gradients and AdamW states)",
}


def budget_text(req: Request, gpu: GPU) -> list[str]:
    n, d, flops = budget_optimal(req.gpu_hours or 0, gpu, req.mfu)
    return [
        f"budget       {req.gpu_hours:g} GPU-hours on {gpu.name} at {req.mfu:.0%} MFU = {flops:.2e} FLOPs",
        f"             compute-optimal (C = 6 N D, D = {CHINCHILLA_TOKENS_PER_PARAM:g} N): {_count(n)} parameters "
        f"trained on {_count(d)} tokens",
    ]


def run_estimate(req: Request) -> str:
    gpu = get_gpu(req.gpu)
    if req.sharding not in SHARDINGS:
        raise LlmtuneError(f"--sharding must be one of {', '.join(SHARDINGS)}, got '{req.sharding}'")
    if not (req.model or req.model_config or req.recipe):
        if req.gpu_hours is None:
            raise LlmtuneError("nothing to estimate: pass --model, --model-config or --recipe, or --gpu-hours")
        require_positive(req.gpu_hours, "--gpu-hours")
        return "\n".join(budget_text(req, gpu))
    target = resolve(req)
    req = replace(req, lora_r=target.lora_r, lora_targets=target.lora_targets)
    arch = arch_from_config(target.config)
    model = meta_model(target.config, target.auto_class, req.trust_remote_code)
    params = count_parameters(model)
    lora_params = count_parameters(model, req.lora_r or 16, req.lora_targets, target.train_head)
    active = lora_params if req.lora_r else params
    setup = Setup(target.batch_size, target.seq_len, target.precision, req.gpus, req.sharding, target.checkpointing)
    mem = memory(arch, active, setup, target.lm_head)
    other_acts = activation_bytes(arch, replace(setup, gradient_checkpointing=not setup.gradient_checkpointing),
                                  target.lm_head)  # fmt: skip
    budget = gpu.memory_gib * GIB
    lines = [
        f"model        {target.label} as {type(model).__name__}: {arch.model_type}, {arch.layers} layers, "
        f"hidden {arch.hidden}, {arch.heads} heads"
        + (f" ({arch.kv_heads} key/value)" if arch.kv_heads != arch.heads else "")
        + f", vocabulary {arch.vocab:,}",
        f"parameters   {params.total:,} ({_count(params.total)}) total, {params.trainable:,} trainable "
        f"(meta device: config only, no weights)",
    ]
    if req.lora_r:
        targets = ",".join(req.lora_targets) if req.lora_targets else "all linear layers"
        share = 100 * lora_params.trainable / lora_params.total
        lines.append(
            f"LoRA         r={req.lora_r} on {targets}: {lora_params.lora:,} adapter parameters; "
            f"{lora_params.trainable:,} trainable ({share:.2f} % of {lora_params.total:,})"
            + (f"; {lora_params.head}" if lora_params.head else "")
        )
    sharding = {"ddp": "DDP (replicated)", "zero2": "ZeRO-2", "zero3": "ZeRO-3", "fsdp": "FSDP full shard"}[
        req.sharding
    ]
    lines += [
        f"setup        {target.batch_size} x {target.seq_len} tokens per GPU micro-batch, {PRECISION_TEXT[target.precision]}, "
        f"{req.gpus} x {req.gpu} ({gpu.memory_gib:g} GiB), {sharding}, gradient checkpointing "
        f"{'on' if target.checkpointing else 'off'}",
        *(f"             {n}" for n in target.notes),
        *(
            [f"             warning: --seq-len {target.seq_len} exceeds the model's {max_pos} positions"]
            if (max_pos := first_attr(target.config, "max_position_embeddings", "n_positions"))
            and target.seq_len > max_pos
            else []
        ),
        "",
        "memory per GPU                         GiB",
        f"  weights                     {_gib(mem.weights):>12}",
        f"  gradients                   {_gib(mem.gradients):>12}",
        f"  AdamW states (2 / param)    {_gib(mem.optimizer):>12}",
        f"  activations                 {_gib(mem.activations):>12}   "
        f"({'without' if target.checkpointing else 'with'} gradient checkpointing: {_gib(other_acts)})",
    ]
    if mem.buffers:
        lines.append(f"  buffers                     {_gib(mem.buffers):>12}   ({'; '.join(mem.notes)})")
    verdict = "fits" if mem.total <= budget else "does NOT fit"
    lines.append(
        f"  total                       {_gib(mem.total):>12}   {verdict} on {req.gpu} ({gpu.memory_gib:g} GiB): "
        f"{100 * mem.total / budget:.0f} % (plus ~1 GiB CUDA context)"
    )
    if mem.total > budget:
        lora_alt = None if req.lora_r else count_parameters(model, 16, None, target.train_head)
        knobs = fitting_knobs(arch, active, setup, budget, target.lm_head, lora_alt)
        lines.append(
            "  would fit with:" if knobs else "  no single knob makes it fit: combine them, or pick a bigger GPU"
        )
        lines += [f"    - {k}" for k in knobs]
    # the precision x sharding matrix
    lines += [
        "",
        f"{f'total per GPU (GiB) over {req.gpus} GPU(s)':<41}"
        + "".join(f"{s:>13}" for s in ("DDP", "ZeRO-2", "ZeRO-3/FSDP")),
    ]
    for precision in ("fp32", "mixed", "pure-bf16"):
        cells = [
            memory(arch, active, replace(setup, precision=precision, sharding=s), target.lm_head).total
            for s in ("ddp", "zero2", "zero3")
        ]
        lines.append(f"  {precision:<39}" + "".join(f"{c / GIB:>13.1f}" for c in cells))
    # compute
    optimal = compute_optimal_tokens(params.total)
    lines += ["", "compute"]
    if target.tokens:
        flops = training_flops(arch, params, target.tokens, target.seq_len, target.checkpointing)
        dense = (8 if target.checkpointing else 6) * (params.total - params.embedding) * target.tokens
        seconds = train_seconds(flops, gpu, req.gpus, req.mfu)
        lines += [
            f"  tokens           {target.tokens:.3g} ({target.tokens / optimal:.2f} x the compute-optimal {optimal:.3g})",
            f"  training FLOPs   {flops:.3g} ({'8' if target.checkpointing else '6'} N D: {dense:.3g}; attention: {flops - dense:.3g})",
            f"  time             {_hours(seconds)} on {req.gpus} x {req.gpu} ({gpu.tflops:g} TFLOP/s peak dense bf16 each) "
            f"at {req.mfu:.0%} MFU = {seconds * req.gpus / 3600:,.1f} GPU-hours",
        ]
    else:
        lines.append(f"  tokens           not given (--tokens N); compute-optimal for {_count(params.total)} parameters: "
                     f"{optimal:.3g} (~{CHINCHILLA_TOKENS_PER_PARAM:g} per parameter)")  # fmt: skip
        flops = training_flops(arch, params, optimal, target.seq_len, target.checkpointing)
        lines.append(f"  at that count    {flops:.3g} FLOPs, {_hours(train_seconds(flops, gpu, req.gpus, req.mfu))} on "
                     f"{req.gpus} x {req.gpu} at {req.mfu:.0%} MFU")  # fmt: skip
    if gpu.note:
        lines.append(f"  ({req.gpu}: {gpu.note})")
    if req.gpu_hours:
        lines += ["", *budget_text(req, gpu)]
    return "\n".join(lines)
