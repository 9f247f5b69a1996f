"""Chunked cross-entropy (``train.loss_chunk_size``): a causal LM's loss without its
[batch, sequence, vocabulary] logits.

The model's own forward runs once (so adapters, DDP, accelerate's autocast and compile wrappers
apply as usual), asked for its hidden states and for the logits of no position
(``logits_to_keep`` = an empty index: the output layer projects zero positions). The positions
that have a target (label at the next position not -100) are then taken ``chunk_size`` at a
time; each slice goes through the output layer and the cross-entropy inside
``torch.utils.checkpoint``, so the forward keeps only the slice's hidden states and its loss, and
the backward recomputes one slice's logits, takes their gradient and frees them before the next
slice. Peak logits memory: one slice (``chunk_size x vocabulary``) instead of the whole batch.

The maths is transformers' ``ForCausalLMLoss``: position t predicts label t+1 (the labels are
shifted, the last position predicts nothing), -100 is ignored, the loss is float32; summing and
normalising (by the batch's target count, or by the Trainer's ``num_items_in_batch``) is the
caller's, as in transformers. Positions without a target are never projected: they add nothing
to the loss or its gradients in the plain computation either.

What it relies on is checked on the run's model before training (:func:`check_model`): the
forward takes ``output_hidden_states`` and ``logits_to_keep`` (transformers' ``*ForCausalLM``
models do), and its logits are ``get_output_embeddings()`` applied to the last hidden state
(models that scale or soft-cap logits after the head, e.g. Gemma 2 or Granite, are refused).

Module level stays torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from llmtune.errors import LlmtuneError

IGNORE_INDEX = -100
OPTION = "train.loss_chunk_size"


def output_head(model: Any) -> Any:
    """The output layer of ``model`` (through DDP / compile wrappers and peft), or None."""
    from accelerate.utils import extract_model_from_parallel

    inner = extract_model_from_parallel(model)
    getter = getattr(inner, "get_output_embeddings", None)
    try:
        return getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        return None


def last_hidden_state(model: Any, inputs: dict) -> Any:
    """The last hidden state of ``model`` on ``inputs`` (no labels), its logits left uncomputed."""
    import torch

    ids = inputs.get("input_ids")
    if ids is None:
        ids = inputs["inputs_embeds"]
    outputs = model(
        **{
            **inputs,
            "output_hidden_states": True,
            "logits_to_keep": torch.empty(0, dtype=torch.long, device=ids.device),
            "use_cache": False,
        }
    )
    return outputs.hidden_states[-1]


def _slice_nll(head: Any, hidden: Any, targets: Any) -> Any:
    """Per-target NLL (float32) of one slice: the output layer, upcast, cross-entropy."""
    import torch.nn.functional as F

    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def target_nll(
    head: Any, hidden: Any, labels: Any, chunk_size: int, autocast: Callable[[], Any] | None = None
) -> tuple[Any, Any]:
    """NLL of every target (float32, in row-major order) and the [B, L-1] mask of the positions
    that have one. ``hidden``: [B, L, H] last hidden states; ``labels``: [B, L] (unshifted, -100
    ignored). ``autocast``: a context-manager factory the output layer runs under (the run's mixed
    precision, as inside the model's forward)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    targets = labels[:, 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX
    states = hidden[:, :-1][keep]  # [N, H]: only positions with a target are projected
    wanted = targets[keep]
    context = autocast or nullcontext

    def run(h: Any, t: Any) -> Any:
        with context():
            return _slice_nll(head, h, t)

    if wanted.numel() == 0:
        # Nothing to predict: the head still joins the graph (zero gradients), as in the plain loss.
        with context():
            return head(states).float().sum(-1), keep
    grad = torch.is_grad_enabled()
    parts = []
    for start in range(0, wanted.numel(), chunk_size):
        h, t = states[start : start + chunk_size], wanted[start : start + chunk_size]
        parts.append(checkpoint(run, h, t, use_reentrant=False) if grad else run(h, t))
    return torch.cat(parts), keep


def causal_lm_nll(
    model: Any, inputs: dict, labels: Any, chunk_size: int, autocast: Callable[[], Any] | None = None
) -> tuple[Any, Any]:
    """Summed NLL of the batch's targets (float32 scalar) and their number, computed in slices of
    ``chunk_size`` targets (see the module doc). ``inputs``: the model inputs without labels."""
    hidden = last_hidden_state(model, inputs)
    nll, keep = target_nll(output_head(model), hidden, labels, chunk_size, autocast)
    return nll.sum(), keep.sum()


def causal_lm_sequence_logps(
    model: Any, inputs: dict, labels: Any, chunk_size: int, autocast: Callable[[], Any] | None = None
) -> tuple[Any, Any]:
    """Per row: summed log-probabilities of its targets (float32 [B]) and their number ([B])."""
    import torch

    hidden = last_hidden_state(model, inputs)
    nll, keep = target_nll(output_head(model), hidden, labels, chunk_size, autocast)
    per_position = torch.zeros(keep.shape, dtype=nll.dtype, device=nll.device).masked_scatter(keep, -nll)
    return per_position.sum(-1), keep.sum(-1)


def check_run_model(cfg: Any, model: Any) -> None:
    """:func:`check_model` when the run sets ``train.loss_chunk_size`` (a task's ``check_model``)."""
    if cfg.train.loss_chunk_size:
        check_model(model)


def check_model(model: Any) -> None:
    """Refuse ``train.loss_chunk_size`` in one line for a model it cannot compute exactly: no output
    layer, a forward without ``logits_to_keep`` / hidden states, or logits that are not the output
    layer applied to the last hidden state (checked on 2 rows of 6 random tokens)."""
    import inspect

    import torch

    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    name = type(base).__name__
    head = output_head(model)
    if head is None:
        raise LlmtuneError(
            f"{OPTION}: {name} has no output layer (get_output_embeddings) to compute the loss in slices"
        )
    params = inspect.signature(base.forward).parameters
    if "logits_to_keep" not in params:
        raise LlmtuneError(
            f"{OPTION}: {name}.forward takes no logits_to_keep, so its logits cannot be skipped: drop {OPTION}"
        )
    vocab = int(getattr(base.config, "vocab_size", 0) or 0)
    if vocab < 2:
        return
    device = next(base.parameters()).device
    ids = torch.randint(0, vocab, (2, 6), generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            logits = model(input_ids=ids, use_cache=False).logits.float()
            projected = head(last_hidden_state(model, {"input_ids": ids})).float()
    finally:
        model.train(was_training)
    if projected.shape != logits.shape or not torch.allclose(projected, logits, atol=1e-4, rtol=1e-4):
        raise LlmtuneError(
            f"{OPTION}: {name}'s logits are not its output layer applied to its last hidden state (it scales or "
            f"soft-caps them after the head), so a chunked loss would differ from its own: drop {OPTION}"
        )
