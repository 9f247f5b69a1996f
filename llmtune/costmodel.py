"""The cost model of a training run: parameters, memory per GPU and compute, as arithmetic.

Pure functions of numbers and config-like objects; nothing here reads a recipe, a task or a file.
The caller passes in what it has read: a ``transformers`` config (any object with its attributes)
for :func:`arch_from_config`, a model built on the meta device for :func:`count_parameters`.

- Parameters: counted on the model given (tied weights counted once). LoRA trainable
  parameters follow from the shapes of the adapted linear layers: r x (in + out) each.
- Memory per GPU: weights, gradients and AdamW states (two per trainable parameter, in the
  parameter's dtype) for fp32, mixed precision (llmtune's ``bf16``/``fp16``: fp32 weights, 16-bit
  activations under autocast) and pure bf16 weights, replicated (DDP) or sharded over N GPUs
  (ZeRO-2: gradients and optimizer states; ZeRO-3 / FSDP full shard: all three). Activations are
  counted tensor by tensor from what the layers keep for the backward pass (see
  :func:`activation_bytes`), with and without gradient checkpointing, plus the loss head's peak
  (logits, log-softmax and their gradients), the largest single item for small models with large
  vocabularies, or one slice's worth with a chunked loss (``train.loss_chunk_size``). Checked
  against measured allocations in ``benchmarks/bench_estimate.py``.
- Compute: training FLOPs ~= 6 x parameters x tokens plus attention (12 x layers x hidden x
  sequence per token), time at a stated MFU on a table of GPUs (peak dense bf16 TFLOP/s), the
  compute-optimal token count (~20 tokens per parameter, Hoffmann et al. 2022) and, for a budget
  in GPU-hours, the model size that budget trains compute-optimally.
- What would make a run fit: the changes to its setup (:func:`fitting_knobs`) that bring it under
  a memory budget.

Imports nothing from llmtune but :mod:`llmtune.errors`; module level stays torch-free (torch only
inside :func:`count_parameters`' helpers, on a model the caller built).
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


def require_positive(value: float | None, flag: str) -> None:
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


def first_attr(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def arch_from_config(config: Any) -> Arch:
    model_type = str(getattr(config, "model_type", ""))
    text = getattr(config, "text_config", None)
    if text is not None and first_attr(config, "hidden_size", "n_embd", "d_model") is None:
        config = text  # multimodal wrappers: the language model does the training
    hidden = first_attr(config, "hidden_size", "n_embd", "d_model", "dim")
    layers = first_attr(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    heads = first_attr(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
    if not (hidden and layers and heads):
        raise LlmtuneError(f"cannot read the layer sizes of a '{model_type}' config (hidden size, layers, heads)")
    decoder_layers = (
        first_attr(config, "num_decoder_layers", default=0) if getattr(config, "is_encoder_decoder", False) else 0
    )
    kv = first_attr(config, "num_key_value_heads", "n_head_kv", default=heads)
    head_dim = first_attr(config, "head_dim", default=hidden // heads) or hidden // heads
    act = str(first_attr(config, "hidden_act", "activation_function", "feed_forward_proj", default="gelu"))
    inter = first_attr(config, "intermediate_size", "n_inner", "d_ff", "ffn_dim", default=None) or 4 * hidden
    return Arch(
        model_type=model_type,
        layers=int(layers) + int(decoder_layers or 0),
        hidden=int(hidden),
        heads=int(heads),
        kv_heads=int(kv),
        head_dim=int(head_dim),
        intermediate=int(inter),
        vocab=int(first_attr(config, "vocab_size", default=0) or 0),
        gated_mlp=model_type in GATED or act.startswith("gated"),
        rms_norm=model_type in RMS,
        python_gelu=act in ("gelu_new", "gelu_fast"),
        attn_dropout=float(
            first_attr(
                config, "attention_probs_dropout_prob", "attn_pdrop", "attention_dropout", "dropout_rate", default=0.0
            )
            or 0.0
        ),
        hidden_dropout=float(
            first_attr(config, "hidden_dropout_prob", "resid_pdrop", "hidden_dropout", "dropout_rate", default=0.0)
            or 0.0
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
    # trainable parameters outside the transformer blocks (embeddings, output layer, final norm, a
    # task head): their gradients exist from the start of the backward pass, the blocks' only as
    # the backward pass reaches them
    trainable_outside: int = 0
    # input features of the LoRA-adapted layers, summed over the model: with lora dropout, each
    # adapted layer keeps a dropped-out copy of its input (and the mask) for the backward pass
    lora_inputs: int = 0


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
    require_positive(r, "--lora-r")
    return sum(r * (fan_in + fan_out) for fan_in, fan_out in _adapted(model, targets))


def _adapted(model: Any, targets: list[str] | None) -> list[tuple[int, int]]:
    """(in, out) of every linear layer LoRA adapts."""
    output = _embeddings(model)[1]
    skip = {name for name, module in model.named_modules() if output is not None and module is output}
    found = []
    for name, fan_in, fan_out in _linear_shapes(model):
        if name in skip:
            continue
        if targets is None:
            if _is_head(model, name):
                continue
        elif not any(name == t or name.endswith("." + t) for t in targets):
            continue
        found.append((fan_in, fan_out))
    return found


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
    blocks = _blocks(model)
    largest = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)
    in_blocks = sum(p.numel() for b in blocks for p in b.parameters())
    params = Params(total=total, trainable=total, embedding=embedding, largest_block=largest,
                    trainable_outside=max(0, total - in_blocks))  # fmt: skip
    if lora_r:
        params.lora = lora_parameters(model, lora_r, lora_targets)
        params.lora_inputs = sum(fan_in for fan_in, _ in _adapted(model, lora_targets))
        head = 0
        if train_head:
            head = sum(p.numel() for n, p in model.named_parameters() if _is_head(model, n))
        # peft's modules_to_save trains a copy of the head and keeps the original beside it
        params.total = total + params.lora + head
        params.trainable = params.lora + head
        params.trainable_outside = head
        params.head = f"{head:,} head parameters trainable" if head else ""
    return params


def _blocks(model: Any) -> list[Any]:
    """The transformer blocks (outermost modules named *Block / *Layer / *DecoderLayer)."""
    found: list[tuple[str, Any]] = []
    for name, module in model.named_modules():
        block = type(module).__name__.endswith(("Block", "Layer", "DecoderLayer"))
        if block and not any(name.startswith(outer + ".") for outer, _ in found):
            found.append((name, module))
    return [m for _, m in found]


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
    loss_chunk_size: int | None = None  # train.loss_chunk_size: the loss head's peak is one slice's
    # micro-batches per optimizer step: from the second on, every gradient exists during the backward pass
    accumulation: int = 1
    lora_dropout: float = 0.0  # peft.dropout of LoRA adapters (with Params.lora_inputs)
    lora_inputs: int = 0  # Params.lora_inputs of the adapted model


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
    if setup.lora_dropout > 0 and setup.lora_inputs:
        # peft applies the dropout inside every adapted layer: a dropped-out copy of the layer's
        # input for the adapter's matmul, and a one-byte mask (measured on CPU: +0.85 GiB for
        # SmolLM2-135M, 1024 tokens, dropout 0.05 on all linear layers; 0 with dropout 0)
        n += setup.lora_inputs / max(arch.layers, 1) * (e_a + 1)
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
    head = head_peak_bytes(arch, setup, lm_head) * tokens
    if setup.loss_chunk_size and head:
        # chunked cross-entropy: one slice's logits at a time, plus a copy of the projected
        # positions' hidden states (and its gradient)
        head = head / tokens * min(tokens, setup.loss_chunk_size)
        edges += 2 * arch.hidden * e_r
    if setup.gradient_checkpointing:
        # each block keeps only its input; one block's activations exist again while it is recomputed
        return tokens * (arch.layers * arch.hidden * e_r + edges) + max(head, tokens * (per_layer + workspace))
    return tokens * (arch.layers * per_layer + edges) + max(head, tokens * workspace)


@dataclass
class Memory:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    buffers: float = 0.0  # DDP gradient buckets, ZeRO-3/FSDP gathered blocks
    notes: list[str] = field(default_factory=list)
    # gradients and activations that never exist at the same time (subtracted from the total)
    overlap: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.buffers - self.overlap


def memory(arch: Arch, params: Params, setup: Setup, lm_head: bool = True) -> Memory:
    if setup.precision not in PRECISIONS:
        raise LlmtuneError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{setup.precision}'")
    if setup.sharding not in SHARDINGS:
        raise LlmtuneError(f"--sharding must be one of {', '.join(SHARDINGS)}, got '{setup.sharding}'")
    for value, flag in ((setup.batch_size, "--batch-size"), (setup.seq_len, "--seq-len"), (setup.gpus, "--gpus")):
        require_positive(value, flag)
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
    overlap = 0.0
    if setup.accumulation == 1 and params.trainable:
        # The optimizer's zero_grad frees the gradients after each step (set_to_none, the default in
        # torch and transformers), and the backward pass creates them as it goes while it frees the
        # activations of the blocks it has passed: the two peaks do not add up. At the start of the
        # backward pass every activation is alive with the gradients outside the blocks (embeddings,
        # output layer, head); at its end every gradient is alive with one block's activations.
        # (Measured: SmolLM2-135M, 1024 tokens, fp32: the summed figure was 13 % above the step peak.)
        # With accumulation, the gradients of earlier micro-batches are there all along.
        outside = grads * params.trainable_outside / params.trainable
        tokens = setup.batch_size * setup.seq_len
        e_a = _act_bytes(setup.precision)[1]
        last_block = tokens * (layer_activation_bytes(arch, setup) + 2 * (arch.hidden + arch.intermediate) * e_a)
        overlap = max(0.0, grads + acts - max(acts + outside, grads + min(acts, last_block)))
    return Memory(weights, grads, optim, acts, buffers, notes, overlap)


# ---------------------------------------------------------------------------------------------
# compute


def training_flops(arch: Arch, params: Params, tokens: float, seq_len: int, checkpointing: bool = False) -> float:
    """6 x N x D (forward + backward of every matmul) plus attention scores (12 x L x h x s per token);
    gradient checkpointing adds one more forward pass (8 x N x D)."""
    require_positive(tokens, "--tokens")
    n_compute = params.total - params.embedding
    dense = (8 if checkpointing else 6) * n_compute * tokens
    attention = (16 if checkpointing else 12) * arch.layers * arch.heads * arch.head_dim * seq_len * tokens
    return dense + attention


def compute_optimal_tokens(n_params: float) -> float:
    return CHINCHILLA_TOKENS_PER_PARAM * n_params


def budget_optimal(gpu_hours: float, gpu: GPU, mfu: float) -> tuple[float, float, float]:
    """(parameters, tokens, FLOPs) that a GPU-hour budget trains compute-optimally:
    C = 6 N D with D = 20 N, so N = sqrt(C / 120)."""
    require_positive(gpu_hours, "--gpu-hours")
    flops = gpu_hours * 3600 * gpu.tflops * 1e12 * mfu
    n = math.sqrt(flops / (6 * CHINCHILLA_TOKENS_PER_PARAM))
    return n, CHINCHILLA_TOKENS_PER_PARAM * n, flops


def train_seconds(flops: float, gpu: GPU, gpus: int, mfu: float) -> float:
    return flops / (gpus * gpu.tflops * 1e12 * mfu)


# ---------------------------------------------------------------------------------------------
# what would make it fit


#: the slice a suggested chunked loss uses (train.loss_chunk_size)
SUGGESTED_LOSS_CHUNK = 4096


def fitting_knobs(arch: Arch, params: Params, setup: Setup, budget: float, lm_head: bool,
                  lora: Params | None, causal_lm: bool = False) -> list[str]:  # fmt: skip
    """Changes to ``setup`` that bring the per-GPU total under ``budget`` bytes, cheapest first
    (``causal_lm``: the loss may be chunked, train.loss_chunk_size)."""
    out = []

    def fits(s: Setup, p: Params = params) -> float | None:
        total = memory(arch, p, s, lm_head).total
        return total if total <= budget else None

    chunk = SUGGESTED_LOSS_CHUNK
    chunkable = causal_lm and lm_head and not setup.loss_chunk_size and setup.batch_size * setup.seq_len > chunk
    if chunkable and (t := fits(replace(setup, loss_chunk_size=chunk))):
        out.append(f"chunked cross-entropy (--set train.loss_chunk_size={chunk}): {t / GIB:.1f} GiB")
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
