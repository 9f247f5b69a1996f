"""``llmtune estimate``: what a run costs before it starts (parameters, memory per GPU, compute).

- Parameters: the model is built from its config alone on the meta device (no weights read or
  allocated), so the count is the model's own, tied weights counted once. LoRA trainable
  parameters follow from the shapes of the adapted linear layers: r x (in + out) each.
- Memory per GPU: weights, gradients and AdamW states (two per trainable parameter, in the
  parameter's dtype) for fp32, mixed precision (llmtune's ``bf16``/``fp16``: fp32 weights, 16-bit
  activations under autocast) and pure bf16 weights, replicated (DDP) or sharded over N GPUs
  (ZeRO-2: gradients and optimizer states; ZeRO-3 / FSDP full shard: all three). Activations are
  counted tensor by tensor from what the layers keep for the backward pass (see
  :func:`activation_bytes`), with and without gradient checkpointing, plus the loss head's peak
  (logits, log-softmax and their gradients), the largest single item for small models with large
  vocabularies. Checked against measured allocations in ``benchmarks/bench_estimate.py``.
- Compute: training FLOPs ~= 6 x parameters x tokens plus attention (12 x layers x hidden x
  sequence per token), time at a stated MFU on a table of GPUs (peak dense bf16 TFLOP/s), the
  compute-optimal token count (~20 tokens per parameter, Hoffmann et al. 2022) and, for a budget
  in GPU-hours, the model size that budget trains compute-optimally.

Module level stays torch-free; torch/transformers/accelerate are imported by the functions that
build a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from llmtune.errors import LlmtuneError

GIB = 1024**3
CHINCHILLA_TOKENS_PER_PARAM = 20.0


@dataclass(frozen=True)
class GPU:
    name: str
    tflops: float  # peak dense bf16 TFLOP/s (fp16 tensor cores where the chip has no bf16)
    memory_gib: float
    note: str = ""


#: Peak dense (no sparsity) bf16 tensor-core throughput and memory, from the vendors' datasheets.
GPUS: dict[str, GPU] = {
    "b200": GPU("NVIDIA B200", 2250, 180),
    "h200": GPU("NVIDIA H200 SXM", 989, 141),
    "h100": GPU("NVIDIA H100 SXM 80GB", 989, 80),
    "h100-pcie": GPU("NVIDIA H100 PCIe 80GB", 756, 80),
    "a100": GPU("NVIDIA A100 SXM 80GB", 312, 80),
    "a100-40gb": GPU("NVIDIA A100 40GB", 312, 40),
    "l40s": GPU("NVIDIA L40S", 362, 48),
    "a6000": GPU("NVIDIA RTX A6000", 155, 48),
    "a10g": GPU("NVIDIA A10G (AWS)", 125, 24, "A10 datasheet figure; the A10G runs at lower clocks"),
    "l4": GPU("NVIDIA L4", 121, 24),
    "rtx4090": GPU("NVIDIA GeForce RTX 4090", 165, 24),
    "rtx3090": GPU("NVIDIA GeForce RTX 3090", 71, 24),
    "v100": GPU("NVIDIA V100 SXM2 32GB", 125, 32, "no bf16: fp16 tensor-core figure"),
    "t4": GPU("NVIDIA T4", 65, 16, "no bf16: fp16 tensor-core figure"),
    "mi300x": GPU("AMD Instinct MI300X", 1307, 192),
    "mi250x": GPU("AMD Instinct MI250X", 383, 128),
}

PRECISIONS = ("fp32", "mixed", "bf16", "fp16", "pure-bf16")
SHARDINGS = ("ddp", "zero2", "zero3", "fsdp")


def get_gpu(name: str) -> GPU:
    gpu = GPUS.get(name.strip().lower())
    if gpu is None:
        raise LlmtuneError(f"unknown GPU '{name}' (--gpu); known: {', '.join(GPUS)}")
    return gpu


def _positive(value: float | None, flag: str) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise LlmtuneError(f"{flag} must be > 0, got {value:g}")


# ---------------------------------------------------------------------------------------------
# architecture and parameters


@dataclass
class Arch:
    """The sizes the memory and FLOP formulas need, read from a transformers config."""

    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated_mlp: bool = False
    rms_norm: bool = False  # HF's python RMSNorm keeps its normalised input too
    python_gelu: bool = False  # gelu_new/gelu_fast: a python formula keeping 4 intermediates
    attn_dropout: float = 0.0
    hidden_dropout: float = 0.0
    eager_attention: bool = False
    encoder_decoder: bool = False


GATED = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "gemma", "gemma2", "gemma3_text", "phi3",
         "olmo", "olmo2", "granite", "cohere", "smollm3", "starcoder2_gated"}  # fmt: skip
RMS = GATED | {"t5", "mt5", "umt5"}


def _first(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def arch_from_config(config: Any) -> Arch:
    model_type = str(getattr(config, "model_type", ""))
    text = getattr(config, "text_config", None)
    if text is not None and _first(config, "hidden_size", "n_embd", "d_model") is None:
        config = text  # multimodal wrappers: the language model does the training
    hidden = _first(config, "hidden_size", "n_embd", "d_model", "dim")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    heads = _first(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
    if not (hidden and layers and heads):
        raise LlmtuneError(f"cannot read the layer sizes of a '{model_type}' config (hidden size, layers, heads)")
    decoder_layers = (
        _first(config, "num_decoder_layers", default=0) if getattr(config, "is_encoder_decoder", False) else 0
    )
    kv = _first(config, "num_key_value_heads", "n_head_kv", default=heads)
    head_dim = _first(config, "head_dim", default=hidden // heads) or hidden // heads
    act = str(_first(config, "hidden_act", "activation_function", "feed_forward_proj", default="gelu"))
    inter = _first(config, "intermediate_size", "n_inner", "d_ff", "ffn_dim", default=None) or 4 * hidden
    return Arch(
        model_type=model_type,
        layers=int(layers) + int(decoder_layers or 0),
        hidden=int(hidden),
        heads=int(heads),
        kv_heads=int(kv),
        head_dim=int(head_dim),
        intermediate=int(inter),
        vocab=int(_first(config, "vocab_size", default=0) or 0),
        gated_mlp=model_type in GATED or act.startswith("gated"),
        rms_norm=model_type in RMS,
        python_gelu=act in ("gelu_new", "gelu_fast"),
        attn_dropout=float(
            _first(
                config, "attention_probs_dropout_prob", "attn_pdrop", "attention_dropout", "dropout_rate", default=0.0
            )
            or 0.0
        ),
        hidden_dropout=float(
            _first(config, "hidden_dropout_prob", "resid_pdrop", "hidden_dropout", "dropout_rate", default=0.0) or 0.0
        ),
        eager_attention=getattr(config, "_attn_implementation", None) == "eager",
        encoder_decoder=bool(decoder_layers),
    )


@dataclass
class Params:
    total: int
    trainable: int
    embedding: int  # input token + position embeddings (no matmul FLOPs)
    largest_block: int  # parameters of the largest transformer block (ZeRO-3/FSDP gathers one at a time)
    lora: int = 0  # adapter parameters added by LoRA (part of total and trainable)
    head: str = ""


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
        _positive(vocab_size, "--vocab-size")
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


def _linear_shapes(model: Any) -> list[tuple[str, int, int]]:
    """(module name, in, out) of every linear layer (nn.Linear and GPT-2's Conv1D)."""
    import torch

    out = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            out.append((name, module.in_features, module.out_features))
        elif type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
            out.append((name, module.weight.shape[0], module.nf))
    return out


def lora_parameters(model: Any, r: int, targets: list[str] | None = None) -> int:
    """Trainable parameters LoRA adds: r x (in + out) per adapted linear layer.

    ``targets`` are module-name suffixes (``q_proj``, ``c_attn``...); None means every linear layer
    but the output layer, as peft's ``target_modules="all-linear"``.
    """
    _positive(r, "--lora-r")
    output = _embeddings(model)[1]
    skip = {name for name, module in model.named_modules() if output is not None and module is output}
    total = 0
    for name, fan_in, fan_out in _linear_shapes(model):
        if name in skip:
            continue
        if targets is None:
            if _is_head(model, name):
                continue
        elif not any(name == t or name.endswith("." + t) for t in targets):
            continue
        total += r * (fan_in + fan_out)
    return total


def _embeddings(model: Any) -> tuple[Any, Any]:
    """(input embeddings, output layer), None where the model has none (audio models raise)."""
    found = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            found.append(getattr(model, getter)() if hasattr(model, getter) else None)
        except (NotImplementedError, AttributeError):
            found.append(None)
    return found[0], found[1]


def _is_head(model: Any, name: str) -> bool:
    """Whether a module belongs to the task head (outside the base model: classifier, qa_outputs...)."""
    prefix = getattr(model, "base_model_prefix", "")
    return bool(prefix) and hasattr(model, prefix) and not name.startswith(prefix + ".")


def count_parameters(model: Any, lora_r: int | None = None, lora_targets: list[str] | None = None,
                     train_head: bool = False) -> Params:  # fmt: skip
    """Parameter counts of a (meta) model; with LoRA, the base is frozen and the head stays trainable
    when ``train_head`` (classification-type tasks: peft's ``modules_to_save``)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = 0
    inputs, outputs = _embeddings(model)
    tied = inputs is not None and outputs is not None and getattr(outputs, "weight", None) is inputs.weight
    for name, module in model.named_modules():
        if type(module).__name__ == "Embedding" or name.endswith(("wpe", "position_embeddings", "embed_positions")):
            if module is inputs and tied:
                continue  # used as the output projection: its matmul costs FLOPs
            embedding += sum(p.numel() for p in module.parameters(recurse=False))
    blocks = [m for m in model.modules() if type(m).__name__.endswith(("Block", "Layer", "DecoderLayer"))]
    largest = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)
    params = Params(total=total, trainable=total, embedding=embedding, largest_block=largest)
    if lora_r:
        params.lora = lora_parameters(model, lora_r, lora_targets)
        head = 0
        if train_head:
            head = sum(p.numel() for n, p in model.named_parameters() if _is_head(model, n))
        # peft's modules_to_save trains a copy of the head and keeps the original beside it
        params.total = total + params.lora + head
        params.trainable = params.lora + head
        params.head = f"{head:,} head parameters trainable" if head else ""
    return params


# ---------------------------------------------------------------------------------------------
# memory


@dataclass
class Setup:
    batch_size: int = 8  # per GPU micro-batch
    seq_len: int = 2048
    precision: str = "mixed"
    gpus: int = 1
    sharding: str = "ddp"
    gradient_checkpointing: bool = False
    device: str = "cuda"  # cpu: dropout keeps float masks, SDPA with dropout keeps s x s scores


def _dtypes(precision: str) -> tuple[int, int, int]:
    """(bytes per weight, per gradient, per AdamW state) - states live in the parameter's dtype."""
    if precision == "pure-bf16":
        return 2, 2, 2
    return 4, 4, 4  # fp32 and mixed precision keep fp32 weights


def _act_bytes(precision: str) -> tuple[int, int]:
    """(bytes per residual-stream / norm-input element, per matmul-side activation element)."""
    if precision == "fp32":
        return 4, 4
    if precision == "pure-bf16":
        return 2, 2
    return 4, 2  # autocast: the residual stream stays fp32, linear inputs/outputs are 16-bit


def layer_activation_bytes(arch: Arch, setup: Setup) -> float:
    """Bytes one transformer block keeps for the backward pass, per token.

    Counted from what the ops save: norm inputs (and HF RMSNorm's normalised copy), the input of
    the QKV, output and MLP projections, Q/K/V and the attention output (SDPA), the MLP's
    intermediates (gated: gate, up, act(gate), product; GELU: input and output; gelu_new's python
    formula: 4 intermediates and the output), dropout masks, and the s x s attention scores when
    they are materialised (eager attention; SDPA with dropout on CPU).
    """
    e_r, e_a = _act_bytes(setup.precision)
    e_m = 1 if setup.device == "cuda" else e_a  # CUDA keeps a bool mask, CPU a float noise tensor
    h, f = arch.hidden, arch.intermediate
    kv = arch.kv_heads * arch.head_dim
    q = arch.heads * arch.head_dim
    n = 2 * h * e_r  # inputs of the two norms
    if arch.rms_norm:
        n += 2 * h * e_r
    n += (h + q + 2 * kv + q + h) * e_a  # qkv input, q, k, v, attention output, mlp input
    if arch.gated_mlp:
        n += 4 * f * e_a
    elif arch.python_gelu:
        n += 5 * f * e_a
    else:
        n += 2 * f * e_a
    if arch.hidden_dropout > 0:
        n += 2 * h * e_m
    scores = arch.eager_attention or (setup.device == "cpu" and arch.attn_dropout > 0)
    if scores:
        s = setup.seq_len
        e_sm = 4 if setup.precision != "pure-bf16" else 2  # softmax runs in fp32 under autocast
        n += arch.heads * s * (e_sm + ((e_m + e_a) if arch.attn_dropout > 0 else 0))
    if arch.encoder_decoder:
        n *= 1.2  # decoder blocks add cross-attention (q, k, v, output of the encoder states)
    return n


def head_peak_bytes(arch: Arch, setup: Setup, lm_head: bool) -> float:
    """Per-token peak of the language-model loss: logits, their fp32 copy, log-softmax and the
    gradients flowing back through them (the biggest item for small models, large vocabularies)."""
    if not lm_head or not arch.vocab:
        return 0.0
    _, e_a = _act_bytes(setup.precision)
    # forward: logits (e_a) + fp32 upcast (when 16-bit) + log-softmax (fp32); backward: the saved
    # log-softmax plus two fp32 gradients of that size.
    forward = e_a + (4 if e_a != 4 else 0) + 4
    backward = 3 * 4
    return arch.vocab * max(forward, backward)


def activation_bytes(arch: Arch, setup: Setup, lm_head: bool = True) -> float:
    """Peak activation memory of one micro-batch on one GPU (bytes)."""
    tokens = setup.batch_size * setup.seq_len
    e_r, e_a = _act_bytes(setup.precision)
    per_layer = layer_activation_bytes(arch, setup)
    edges = arch.hidden * (e_r * (2 if arch.rms_norm else 1) + e_a)  # final norm and the head's input
    if arch.hidden_dropout > 0:
        edges += arch.hidden * (1 if setup.device == "cuda" else e_a)  # embedding dropout
    # The backward pass of a block also holds gradients of its activations (workspace). The loss
    # head's peak comes first, at the start of the backward pass, and is gone before the blocks'
    # backward (and, with checkpointing, their recomputation) starts: the two do not add up.
    workspace = 2 * (arch.hidden + arch.intermediate) * e_a
    head = head_peak_bytes(arch, setup, lm_head)
    if setup.gradient_checkpointing:
        # each block keeps only its input; one block's activations exist again while it is recomputed
        return tokens * (arch.layers * arch.hidden * e_r + edges + max(head, per_layer + workspace))
    return tokens * (arch.layers * per_layer + edges + max(head, workspace))


@dataclass
class Memory:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    buffers: float = 0.0  # DDP gradient buckets, ZeRO-3/FSDP gathered blocks
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.buffers


def memory(arch: Arch, params: Params, setup: Setup, lm_head: bool = True) -> Memory:
    if setup.precision not in PRECISIONS:
        raise LlmtuneError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{setup.precision}'")
    if setup.sharding not in SHARDINGS:
        raise LlmtuneError(f"--sharding must be one of {', '.join(SHARDINGS)}, got '{setup.sharding}'")
    for value, flag in ((setup.batch_size, "--batch-size"), (setup.seq_len, "--seq-len"), (setup.gpus, "--gpus")):
        _positive(value, flag)
    w_b, g_b, o_b = _dtypes(setup.precision)
    n = setup.gpus
    weights = params.total * w_b
    grads = params.trainable * g_b
    optim = params.trainable * 2 * o_b
    buffers = 0.0
    notes = []
    if setup.sharding == "ddp":
        if n > 1:
            buffers = grads  # DDP's gradient buckets hold a second copy of the gradients
            notes.append("DDP gradient buckets: one more copy of the gradients")
    elif setup.sharding == "zero2":
        grads, optim = grads / n, optim / n
    else:  # zero3 / fsdp full shard
        weights, grads, optim = weights / n, grads / n, optim / n
        compute_bytes = 2 if setup.precision != "fp32" else 4
        buffers = 2 * params.largest_block * compute_bytes  # the gathered block and the prefetched next one
        notes.append("ZeRO-3/FSDP: two gathered blocks at a time")
    acts = activation_bytes(arch, setup, lm_head)
    return Memory(weights, grads, optim, acts, buffers, notes)


# ---------------------------------------------------------------------------------------------
# compute


def training_flops(arch: Arch, params: Params, tokens: float, seq_len: int, checkpointing: bool = False) -> float:
    """6 x N x D (forward + backward of every matmul) plus attention scores (12 x L x h x s per token);
    gradient checkpointing adds one more forward pass (8 x N x D)."""
    _positive(tokens, "--tokens")
    n_compute = params.total - params.embedding
    dense = (8 if checkpointing else 6) * n_compute * tokens
    attention = (16 if checkpointing else 12) * arch.layers * arch.heads * arch.head_dim * seq_len * tokens
    return dense + attention


def compute_optimal_tokens(n_params: float) -> float:
    return CHINCHILLA_TOKENS_PER_PARAM * n_params


def budget_optimal(gpu_hours: float, gpu: GPU, mfu: float) -> tuple[float, float, float]:
    """(parameters, tokens, FLOPs) that a GPU-hour budget trains compute-optimally:
    C = 6 N D with D = 20 N, so N = sqrt(C / 120)."""
    _positive(gpu_hours, "--gpu-hours")
    flops = gpu_hours * 3600 * gpu.tflops * 1e12 * mfu
    n = math.sqrt(flops / (6 * CHINCHILLA_TOKENS_PER_PARAM))
    return n, CHINCHILLA_TOKENS_PER_PARAM * n, flops


def train_seconds(flops: float, gpu: GPU, gpus: int, mfu: float) -> float:
    return flops / (gpus * gpu.tflops * 1e12 * mfu)


# ---------------------------------------------------------------------------------------------
# what would make it fit


def fitting_knobs(arch: Arch, params: Params, setup: Setup, budget: float, lm_head: bool,
                  lora: Params | None) -> list[str]:  # fmt: skip
    """Changes to ``setup`` that bring the per-GPU total under ``budget`` bytes, cheapest first."""
    out = []

    def fits(s: Setup, p: Params = params) -> float | None:
        total = memory(arch, p, s, lm_head).total
        return total if total <= budget else None

    if not setup.gradient_checkpointing and (t := fits(replace(setup, gradient_checkpointing=True))):
        out.append(f"gradient checkpointing (--set train.gradient_checkpointing=true): {t / GIB:.1f} GiB")
    batch = setup.batch_size
    while batch > 1:
        batch //= 2
        if t := fits(replace(setup, batch_size=batch)):
            accum = math.ceil(setup.batch_size / batch)
            out.append(
                f"batch size {batch} with gradient accumulation x{accum} (same effective batch): {t / GIB:.1f} GiB"
            )
            break
    if setup.gpus > 1:
        for sharding in ("zero2", "zero3"):
            if sharding != setup.sharding and (t := fits(replace(setup, sharding=sharding))):
                out.append(f"{sharding} sharding over {setup.gpus} GPUs: {t / GIB:.1f} GiB")
                break
    else:
        for gpus in (2, 4, 8, 16, 32, 64):
            if t := fits(replace(setup, gpus=gpus, sharding="zero3")):
                out.append(f"ZeRO-3 / FSDP over {gpus} GPUs: {t / GIB:.1f} GiB per GPU")
                break
    if lora is not None and (t := fits(setup, lora)):
        out.append(f"LoRA (r=16, all linear layers; base weights frozen): {t / GIB:.1f} GiB")
    both = replace(setup, gradient_checkpointing=True, batch_size=1)
    if not out and (t := fits(both)):
        out.append(f"gradient checkpointing and batch size 1: {t / GIB:.1f} GiB")
    return out


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
        _positive(value, flag)
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
        _positive(req.gpu_hours, "--gpu-hours")
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
            if (max_pos := _first(target.config, "max_position_embeddings", "n_positions")) and target.seq_len > max_pos
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
