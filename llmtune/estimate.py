"""``llmtune estimate``: what a run costs before it starts (parameters, memory per GPU, compute).

The command side: it resolves what to estimate from a recipe or flags (:func:`resolve`), reads the
model's config (:func:`load_model_config`, config.json only) and builds the model on the meta
device (:func:`meta_model`: no weights read or allocated, so the parameter count is the model's
own), then hands them to the cost model (:mod:`llmtune.costmodel`, the formulas) and prints its
figures as a table (:func:`estimate_sections`).

``--measure`` checks the estimate on this machine (:func:`run_measure`): the run itself
(``llmtune finetune|pretrain`` in a child process, a few optimizer steps, the estimate's batch,
sequence length and precision, output in a temporary folder removed afterwards) reports the peak
memory of its training steps (CPU: resident memory; GPU: ``torch.cuda.max_memory_allocated``) and
what it held when training began; the child's whole-process peak resident memory is read from
outside (``os.wait4``). Both are printed next to this machine's estimate.

Module level stays torch-free; torch/transformers/accelerate are imported by the functions that
build a model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from llmtune.config import PeftArgs
from llmtune.costmodel import (
    CHINCHILLA_TOKENS_PER_PARAM,
    GIB,
    GPU,
    PRECISIONS,
    SHARDINGS,
    Params,
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
    measure: bool = False
    measure_steps: int | None = None


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
    task: str | None = None
    causal_lm: bool = False  # a causal LM loss (train.loss_chunk_size applies)
    loss_chunk_size: int | None = None
    accumulation: int = 1  # micro-batches per optimizer step
    lora_dropout: float = 0.0  # peft.dropout of the adapters (a recipe's, --set's, or the default)


def _precision(value: str) -> str:
    value = value.strip().lower()
    if value == "auto":  # train.precision auto: bf16 mixed precision on a GPU that has it
        return "mixed"
    if value == "auto":  # train.precision auto: bf16 mixed precision on the GPUs estimate plans for
        return "mixed"
    if value not in PRECISIONS:
        raise LlmtuneError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{value}'")
    return "mixed" if value in ("bf16", "fp16") else value


def _causal_lm(task_name: str | None, auto_class: str) -> bool:
    if task_name:
        from llmtune.tasks import get_task

        return get_task(task_name).causal_lm_loss
    return auto_class.endswith(("ForCausalLM", "LMHeadModel"))


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
    chunk, accumulation, lora_dropout = None, 1, None
    if req.model and req.task and req.sets and not req.recipe:
        # --set with --model and --task: the run's own settings the memory depends on (what
        # --measure runs: the task's default recipe with these overrides)
        from llmtune.resolve import load_config

        flag = "--objective" if req.task in ("clm", "mlm") else "--task"
        run = load_config(task=req.task, sets=req.sets, flags={"model.name_or_path": req.model}, task_flag=flag)
        chunk, accumulation = run.train.loss_chunk_size, run.train.gradient_accumulation_steps
        lora_dropout = run.peft.dropout
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
        chunk = cfg.train.loss_chunk_size
        accumulation, lora_dropout = cfg.train.gradient_accumulation_steps, cfg.peft.dropout
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
        task=task_name,
        causal_lm=_causal_lm(task_name, auto_class),
        loss_chunk_size=chunk,
        accumulation=accumulation,
        lora_dropout=PeftArgs().dropout if lora_dropout is None else lora_dropout,
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


def estimate_sections(req: Request) -> Iterator[str]:
    """The printed estimate, section by section: with --measure, the estimate comes out before the
    measuring run starts (it takes a while), then a line saying it runs, then the measured figures."""
    gpu = get_gpu(req.gpu)
    if req.sharding not in SHARDINGS:
        raise LlmtuneError(f"--sharding must be one of {', '.join(SHARDINGS)}, got '{req.sharding}'")
    asked = req
    if req.measure or req.measure_steps is not None:
        check_measure_request(req)
    if not (req.model or req.model_config or req.recipe):
        if req.gpu_hours is None:
            raise LlmtuneError("nothing to estimate: pass --model, --model-config or --recipe, or --gpu-hours")
        require_positive(req.gpu_hours, "--gpu-hours")
        yield "\n".join(budget_text(req, gpu))
        return
    target = resolve(req)
    req = replace(req, lora_r=target.lora_r, lora_targets=target.lora_targets)
    arch = arch_from_config(target.config)
    model = meta_model(target.config, target.auto_class, req.trust_remote_code)
    params = count_parameters(model)
    lora_params = count_parameters(model, req.lora_r or 16, req.lora_targets, target.train_head)
    active = lora_params if req.lora_r else params
    setup = Setup(target.batch_size, target.seq_len, target.precision, req.gpus, req.sharding, target.checkpointing,
                  loss_chunk_size=target.loss_chunk_size, accumulation=target.accumulation,
                  lora_dropout=target.lora_dropout if req.lora_r else 0.0, lora_inputs=active.lora_inputs)  # fmt: skip
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
        f"{'on' if target.checkpointing else 'off'}"
        + (f", loss in slices of {target.loss_chunk_size} tokens" if target.loss_chunk_size else ""),
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
    if mem.overlap:
        lines.append(
            f"  not at the same time        {_gib(-mem.overlap):>12}   (the backward pass creates gradients as it frees "
            "activations)"
        )
    if mem.buffers:
        lines.append(f"  buffers                     {_gib(mem.buffers):>12}   ({'; '.join(mem.notes)})")
    verdict = "fits" if mem.total <= budget else "does NOT fit"
    lines.append(
        f"  total                       {_gib(mem.total):>12}   {verdict} on {req.gpu} ({gpu.memory_gib:g} GiB): "
        f"{100 * mem.total / budget:.0f} % (plus ~1 GiB CUDA context)"
    )
    if mem.total > budget:
        lora_alt = None if req.lora_r else count_parameters(model, 16, None, target.train_head)
        knobs = fitting_knobs(arch, active, setup, budget, target.lm_head, lora_alt, target.causal_lm)
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
    yield "\n".join(lines)
    if req.measure:
        steps = asked.measure_steps or DEFAULT_MEASURE_STEPS
        yield f"\nmeasuring: {steps} optimizer step{'s' * (steps != 1)} of this run on this machine ..."
        yield "\n".join(run_measure(asked, target, arch, active))


# ---------------------------------------------------------------------------------------------
# --measure: the run itself, a few steps on this machine

DEFAULT_MEASURE_STEPS = 3
MIB = 2**20


def check_measure_request(req: Request) -> None:
    """What --measure cannot do, refused before anything is read or run."""
    if not req.measure:
        raise LlmtuneError("--measure-steps sets how long --measure runs: add --measure")
    if req.measure_steps is not None and req.measure_steps < 1:
        raise LlmtuneError(f"--measure-steps must be >= 1, got {req.measure_steps}")
    if not req.recipe and not req.model:
        raise LlmtuneError(
            "--measure trains the model for a few steps: pass --recipe NAME|FILE (a recipe names the model, "
            "tokenizer and data), or --model with --task and its data (--set data.dataset=...)"
        )
    if req.model and not req.task:
        raise LlmtuneError("--measure with --model needs --task (or --objective): which task to train")
    if req.gpus != 1 or req.sharding != "ddp":
        raise LlmtuneError(
            "--measure runs on one device of this machine: drop --gpus/--sharding (measure one device's share)"
        )
    if req.vocab_size is not None:
        raise LlmtuneError("--measure trains with the tokenizer's vocabulary: drop --vocab-size")
    if req.precision and req.precision.strip().lower() == "pure-bf16":
        raise LlmtuneError("--measure: runs have no pure-bf16 precision (train.precision: fp32, bf16, fp16): pick one")


@dataclass
class Measured:
    """What a --measure run reported (bytes)."""

    command: list[str]
    seconds: float
    device: str  # cuda | cpu
    precision: str  # the run's train.precision: fp32 | bf16 | fp16
    step_peak: float  # the training steps' peak: GPU allocated, or resident memory on CPU
    begin: float | None  # the same when training began (model loaded)
    states: float | None  # the same right after an optimizer step: gradients and optimizer states live
    process_peak: float  # the child's peak resident memory, from outside
    steps: int
    train_seconds: float | None  # the Trainer's train_runtime: the steps, without loading and saving
    loss_chunk_size: int | None  # the run's train.loss_chunk_size
    accumulation: int  # the run's train.gradient_accumulation_steps
    lora_dropout: float  # the run's peft.dropout where it trains LoRA adapters, else 0
    full_rows: bool  # every row is the sequence length (pretraining blocks), as the estimate assumes


def measure_plan(req: Request, target: Target, output_dir: str) -> tuple[list[str], Any, str, str]:
    """The child's command line (after ``llmtune``), the config it runs (resolved and checked
    here), the device and its precision. The run gets the estimate's batch, sequence length,
    precision, checkpointing and adapters, so that the two describe the same steps."""
    from llmtune import hardware
    from llmtune.resolve import load_config
    from llmtune.tasks import get_task

    task = get_task(target.task or "")
    pretrain = task.family == "lm"
    args = ["pretrain" if pretrain else "finetune"]
    flag = "--objective" if pretrain else "--task"
    if req.recipe:
        args += ["--recipe", req.recipe]
    if req.task:
        args += [flag, req.task]
    if req.model:
        args += ["--model", req.model]
    if req.trust_remote_code:
        args.append("--trust-remote-code")
    steps = req.measure_steps or DEFAULT_MEASURE_STEPS
    args += ["--max-steps", str(steps), "--output-dir", output_dir]
    seq_key = "options.block_size" if pretrain else "data.max_length"
    sets = [
        f"train.batch_size={target.batch_size}",
        f"{seq_key}={target.seq_len}",
        f"train.gradient_checkpointing={str(target.checkpointing).lower()}",
    ]
    if req.lora_r:  # asked on the command line (a recipe's peft section comes with the recipe)
        sets += ["peft.method=lora", f"peft.r={req.lora_r}"]
        if req.lora_targets:
            sets.append(f"peft.target_modules=[{', '.join(req.lora_targets)}]")
    sets += list(req.sets or [])
    # only the training steps matter: no tracker, no evaluation during training, a short final one
    sets += ["train.report_to=[none]", "train.eval_strategy=no", "train.logging_steps=1", "train.progress=quiet"]
    sets += ["data.max_eval_samples=8"]
    flags = {"model.name_or_path": req.model, "train.max_steps": steps, "train.output_dir": output_dir}
    cfg = load_config(recipe=req.recipe, task=req.task, sets=sets, flags=flags, task_flag=flag)
    device = "cuda" if hardware.cuda_available() else "cpu"
    asked = (req.precision or cfg.train.precision).strip().lower()
    if asked == "mixed":
        asked = "auto" if device == "cuda" else "bf16"  # 16-bit autocast: bf16 where the GPU has it, CPU autocast
    precision = hardware.resolve_precision(asked)
    # the longest rows first, so that the few steps measured are as long as the estimate assumes
    # (packed blocks end in a partial block that a plain shuffle may put among them)
    longest = [] if cfg.data.streaming else [f"train.longest_first={steps}"]
    for item in (*sets, *longest, f"train.precision={precision}"):
        args += ["--set", item]
    return args, cfg, device, precision


def _child_env(device: str) -> dict:
    import os

    env = dict(os.environ)
    if device == "cpu":
        # every large buffer its own mapping: freed tensors leave the resident set at once, so the
        # sampled resident memory follows live tensors (as benchmarks/bench_estimate.py measures)
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    else:
        import torch

        visible = env.get("CUDA_VISIBLE_DEVICES")
        if torch.cuda.device_count() > 1:  # one device, as the estimate: no DataParallel over all of them
            env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[0] if visible else "0"
    return env


def _child_error(log: str, code: int) -> str:
    errors = [line[len("error:") :].strip() for line in log.splitlines() if line.startswith("error:")]
    if errors:
        return errors[-1]
    if code < 0:
        import signal

        name = signal.Signals(-code).name
        return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    tail = [line for line in log.splitlines() if line.strip()][-1:] or ["no output"]
    return f"exit code {code}: {tail[0].strip()}"


def measure(req: Request, target: Target) -> Measured:
    """Run the plan of :func:`measure_plan` in a child process and read what it reports."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="llmtune-measure-") as tmp:
        out = Path(tmp) / "run"
        args, cfg, device, precision = measure_plan(req, target, str(out))
        log_path = Path(tmp) / "output.log"
        started = time.perf_counter()
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "llmtune", *args], stdout=log, stderr=subprocess.STDOUT, env=_child_env(device)
            )
            try:
                _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not all children's
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            proc.returncode = code = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        shown = [a if a != str(out) else "TMP" for a in args]
        if code != 0:
            text = log_path.read_text(encoding="utf-8", errors="replace")
            raise LlmtuneError(f"estimate --measure: the run failed ({_child_error(text, code)})")
        train = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["train"]
        log_rows = [json.loads(line) for line in (out / "training_log.jsonl").read_text(encoding="utf-8").splitlines()]
    gpu = device == "cuda"
    peak = train.get("train_step_peak_gpu_allocated_mb" if gpu else "train_step_peak_rss_mb")
    if peak is None:
        raise LlmtuneError("estimate --measure: the run reported no peak memory of its training steps")
    begin = train.get("train_begin_gpu_allocated_mb" if gpu else "train_begin_rss_mb")
    states = train.get("train_states_gpu_allocated_mb" if gpu else "train_states_rss_mb")
    max_rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # macOS: bytes, Linux: KiB
    return Measured(
        command=shown,
        seconds=seconds,
        device=device,
        precision=precision,
        step_peak=peak * MIB,
        begin=begin * MIB if begin is not None else None,
        states=states * MIB if states is not None else None,
        process_peak=float(max_rss),
        steps=sum(1 for r in log_rows if "loss" in r),
        train_seconds=train.get("train_runtime"),
        loss_chunk_size=cfg.train.loss_chunk_size,
        accumulation=cfg.train.gradient_accumulation_steps,
        lora_dropout=cfg.peft.dropout if cfg.peft.method in ("lora", "dora") else 0.0,
        full_rows=cfg.task in ("clm", "mlm") and getattr(cfg.options, "packing", "blocks") == "blocks",
    )


def _mib(value: float) -> str:
    return f"{value / MIB:,.1f}"


def _diff(estimate: float, measured: float) -> str:
    return f"{100 * (measured - estimate) / estimate:+.0f} %" if estimate > 0 else "-"


def measured_setup(target: Target, m: Measured, params: Params) -> Setup:
    """The cost model's setup for what the measuring run did: this machine's device and precision."""
    precision = "fp32" if m.precision == "fp32" else "mixed"
    return Setup(target.batch_size, target.seq_len, precision, 1, "ddp", target.checkpointing, device=m.device,
                 loss_chunk_size=m.loss_chunk_size, accumulation=m.accumulation, lora_dropout=m.lora_dropout,
                 lora_inputs=params.lora_inputs)  # fmt: skip


def run_measure(req: Request, target: Target, arch: Any, params: Any) -> list[str]:
    """The --measure section: this machine's estimate next to what the run measured."""
    import shlex

    from llmtune.hardware import machine

    m = measure(req, target)
    mem = memory(arch, params, measured_setup(target, m, params), target.lm_head)
    added = mem.total - mem.weights
    gpu = m.device == "cuda"
    what = "allocated GPU memory" if gpu else "resident memory"
    lines = [
        f"measured     {m.steps} optimizer step{'s' * (m.steps != 1)} on this machine ({machine()}, {m.precision}) "
        f"in {m.seconds:.1f} s:",
        f"             llmtune {shlex.join(m.command)}   (TMP: a temporary folder, removed)",
        f"{'memory (MiB)':<52}{'estimate':>10}{'measured':>11}{'difference':>12}",
        f"  {'training step peak (' + what + ')':<50}{_mib(mem.total):>10}{_mib(m.step_peak):>11}"
        f"{_diff(mem.total, m.step_peak):>12}",
    ]
    if m.begin is not None:
        grown = m.step_peak - m.begin
        lines.append(
            f"  {'added by training (gradients, AdamW, activations)':<50}{_mib(added):>10}{_mib(grown):>11}"
            f"{_diff(added, grown):>12}"
        )
    if m.begin is not None and m.states is not None:
        static = mem.gradients + mem.optimizer
        lines.append(
            f"  {'  of which gradients + AdamW states (after a step)':<50}{_mib(static):>10}"
            f"{_mib(m.states - m.begin):>11}{_diff(static, m.states - m.begin):>12}"
        )
    lines.append(f"  {'whole run, peak resident memory (from outside)':<50}{'-':>10}{_mib(m.process_peak):>11}")
    if gpu:
        lines.append(
            "  GPU: torch.cuda.max_memory_allocated during the steps counts tensors only; the CUDA context (~0.5-1 GiB) "
            "and the caching allocator's reserve come on top (nvidia-smi shows more)"
        )
    else:
        held = f" ({_mib(m.begin)} MiB when training began, weights included)" if m.begin is not None else ""
        lines.append(
            "  CPU: resident memory also holds the Python/torch runtime, libraries, tokenizer and data"
            + held
            + ", which the estimate leaves out; the second row is the step peak minus that starting point"
        )
    if not m.full_rows:
        lines.append(
            f"  the estimate assumes {target.batch_size} rows of {target.seq_len} tokens per micro-batch: this run's "
            f"rows are as long as its data (padded to the batch's longest, or packed), so it may measure less"
        )
    return lines
