"""MLM masking: BERT's 80/10/10 on a batch (training, drawn by the collator) and masks drawn
once for the eval blocks.

Module level stays torch-free.
"""

from __future__ import annotations

from typing import Any

from llmtune.tasks.lm.data import dataset_map


def fixed_masks(packed: Any, tokenizer: Any, options: Any, seed: int) -> Any:
    """MLM eval blocks with their masks drawn once (seeded by row position): every evaluation
    scores the same tokens, so numbers are comparable across steps and runs."""
    import numpy as np

    whole = bool(getattr(options, "whole_word_masking", False))

    def apply(batch: dict, indices: list[int]) -> dict:
        rng = np.random.default_rng([seed, indices[0] if indices else 0])
        ids_out, labels_out = [], []
        for row, ids in enumerate(batch["input_ids"]):
            arr = np.asarray([ids], dtype=np.int64)
            special = np.asarray([batch["special_tokens_mask"][row]], dtype=bool)
            starts = np.asarray([batch["word_starts"][row]], dtype=bool) if whole else None
            masked, labels = mask_tokens(arr, special, starts, rng, options, tokenizer.mask_token_id, len(tokenizer))
            ids_out.append(masked[0].tolist())
            labels_out.append(labels[0].tolist())
        return {"input_ids": ids_out, "labels": labels_out}

    drop = ["special_tokens_mask"] + (["word_starts"] if whole else [])
    return dataset_map(packed, apply, batched=True, with_indices=True, remove_columns=drop, desc="masking eval blocks")


def mask_tokens(
    input_ids: Any, special: Any, word_starts: Any, rng: Any, options: Any, mask_id: int, vocab_size: int
) -> tuple[Any, Any]:
    """BERT masking on a padded batch (numpy): select ``mlm_probability`` of the non-special
    tokens (or of the words, then all their sub-words), replace 80% of the selected by [MASK],
    10% by a random token, keep 10%; labels are -100 everywhere else.

    Own code rather than ``DataCollatorForLanguageModeling`` because that collator's whole-word
    mode drops the 80/10/10 replacement, finds words from character offsets (gluing punctuation
    to words), and draws from one generator shared by training and evaluation.
    """
    import numpy as np

    inputs = input_ids.copy()
    labels = input_ids.copy()
    eligible = ~special
    p = options.mlm_probability
    if word_starts is None:
        selected = (rng.random(inputs.shape) < p) & eligible
    else:
        starts = word_starts | special
        starts[:, 0] = True  # a block may begin mid-word
        word_index = np.cumsum(starts, axis=1) - 1
        drawn = (rng.random(inputs.shape) < p) & starts & eligible
        chosen = np.zeros(inputs.shape, dtype=bool)
        rows, cols = np.nonzero(drawn)
        chosen[rows, word_index[rows, cols]] = True
        selected = np.take_along_axis(chosen, word_index, axis=1) & eligible
    labels[~selected] = -100
    draw = rng.random(inputs.shape)
    to_mask = selected & (draw < options.mask_replace_prob)
    to_random = (
        selected
        & (draw >= options.mask_replace_prob)
        & (draw < options.mask_replace_prob + options.random_replace_prob)
    )
    inputs[to_mask] = mask_id
    inputs[to_random] = rng.integers(0, vocab_size, size=int(to_random.sum()))
    return inputs, labels
