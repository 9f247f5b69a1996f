"""Padding-free batches: the examples of a batch packed into few rows, each attending only to itself.

A padded batch of examples that vary in length spends most of its compute on pad tokens. Here
the batch's examples are laid end to end instead, ``position_ids`` restart at 0 at each example,
no ``attention_mask`` is passed, and transformers' masking utilities
(``masking_utils.find_packed_sequence_indices``) turn restarting positions into a block-diagonal
causal mask on sdpa/eager/flex; FlashAttention-2 reads the same boundaries as varlen
``cu_seq_lens`` instead. Examples never attend to each other, and each example's first label is
-100 (in a padded batch the first token is never a target either), so every example's loss is
exactly its loss alone: the same examples per step give the same loss as padded batches, with
less compute.

Two layouts:

- ``rows`` (sdpa, eager, flex_attention): examples first-fit into rows as wide as the batch's
  longest example (or ``row_length`` when given and wider), rows right-padded to the longest row.
  These kernels compute a whole row's attention under the block-diagonal mask, so a row costs
  width² however its examples split it: rows as wide as the longest example keep that cost at or
  below a padded batch's (rows x longest² <= batch x longest²), where rows of ``max_length`` would
  cost more than padding whenever the examples are much shorter than ``max_length``. The padding
  tail is its own "document" with label -100.
- ``flat`` (FlashAttention-2): one row of all examples plus ``cu_seq_lens_q/k`` and
  ``max_length_q/k``, so the varlen kernel does only the per-example work (and does not sync the
  device to find the boundaries).

The same collator serves the eval loop, so validation batches are padding-free too, on one
process: with several, accelerate's ``gather_for_metrics`` trims the last gathered batch to the
number of *examples* left, which is wrong for rows holding several examples, so multi-process
evaluation uses padded batches (:func:`multi_process`).

Module level stays torch-free.
"""

from __future__ import annotations

from typing import Any

from llmtune.errors import LlmtuneError


def layout_for(attn_implementation: str | None) -> str:
    """``flat`` for FlashAttention kernels (varlen), ``rows`` for mask-based ones."""
    return "flat" if attn_implementation and attn_implementation.startswith("flash_attention") else "rows"


def first_fit_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into rows of at most ``capacity`` tokens (first-fit decreasing)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


class PaddingFreeCollator:
    """Packs a batch of ``{"input_ids"[, "labels"]}`` examples without padding between them.

    ``labels`` default to the inputs (causal LM). ``pad_id`` fills the short rows of the ``rows``
    layout, whose rows are as wide as the longest example unless ``row_length`` is wider. Passes
    ``use_cache=False``: with a KV cache transformers ignores restarting positions.
    """

    def __init__(self, pad_id: int, row_length: int | None = None, layout: str = "rows"):
        if layout not in ("rows", "flat"):
            raise ValueError(f"layout must be rows or flat, got {layout!r}")
        self.pad_id = int(pad_id)
        self.row_length = int(row_length) if row_length is not None else 0
        self.layout = layout

    def __call__(self, features: list[dict]) -> dict:
        import torch

        seqs = [list(f["input_ids"]) for f in features]
        labels = [list(f["labels"]) if "labels" in f else list(f["input_ids"]) for f in features]
        lengths = [len(s) for s in seqs]
        if self.layout == "flat":
            rows = [list(range(len(seqs)))]
        else:
            rows = first_fit_rows(lengths, max(self.row_length, max(lengths)))
        width = max(sum(lengths[i] for i in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        lab = torch.full((len(rows), width), -100, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                n = lengths[i]
                ids[r, at : at + n] = torch.tensor(seqs[i], dtype=torch.long)
                lab[r, at : at + n] = torch.tensor(labels[i], dtype=torch.long)
                lab[r, at] = -100  # predicted from the previous example: not a target
                pos[r, at : at + n] = torch.arange(n)
                at += n
            pos[r, at:] = torch.arange(width - at)  # the padding tail: a separate "document"
        batch: dict[str, Any] = {"input_ids": ids, "labels": lab, "position_ids": pos, "use_cache": False}
        if self.layout == "flat":
            cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
            batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
        return batch


def check_model_takes_positions(model: Any, option: str) -> None:
    """Padding-free batches need a model whose forward takes ``position_ids``."""
    import inspect

    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    if "position_ids" not in inspect.signature(base.forward).parameters:
        raise LlmtuneError(
            f"{option} needs a model that takes position_ids; {type(base).__name__} does not: turn the option off"
        )


def probe_document_attention(model: Any, option: str) -> None:
    """Check, on 2 short random examples, that the model really keeps packed examples apart
    (some architectures ignore restarting position ids): refuse ``option`` when it does not.

    Only for mask-based kernels on the model's current device; FlashAttention-2 reads the
    boundaries from ``cu_seq_lens`` and needs a GPU, so it is not probed here.
    """
    import torch

    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    impl = getattr(base.config, "_attn_implementation", "eager") or "eager"
    if impl.startswith("flash_attention"):
        return
    vocab = int(getattr(base.config, "vocab_size", 0) or 0)
    if vocab < 2:
        return
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, vocab, (5,), generator=generator)
    b = torch.randint(0, vocab, (4,), generator=generator)
    device = next(base.parameters()).device
    batch = PaddingFreeCollator(pad_id=0, row_length=16)([{"input_ids": a.tolist()}, {"input_ids": b.tolist()}])
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            packed = (
                base(
                    input_ids=batch["input_ids"].to(device),
                    position_ids=batch["position_ids"].to(device),
                    use_cache=False,
                )
                .logits[0]
                .float()
            )
            alone = base(input_ids=b[None].to(device), use_cache=False).logits[0].float()
    finally:
        base.train(was_training)
    # the row holds the longer example first (first-fit decreasing)
    if not torch.allclose(packed[5:9], alone, atol=1e-3, rtol=1e-3):
        raise LlmtuneError(
            f"{option}: {type(base).__name__} with attention {impl} lets packed examples attend to each other "
            f"(it ignores restarting position_ids): turn the option off or try model.attn_implementation=sdpa"
        )


def multi_process() -> bool:
    """Whether this run has several processes (then eval batches stay padded, see the module doc)."""
    from llmtune.launch import distributed_state

    return distributed_state().num_processes > 1
