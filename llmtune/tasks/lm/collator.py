"""The LM batch collator (padding, clm labels, mlm masks).

Module level stays torch-free.
"""

from __future__ import annotations

from typing import Any

from llmtune.tasks.lm.masking import mask_tokens


class LMCollator:
    """Pads packed blocks (only a batch's partial last block is short) and makes labels:
    clm = the inputs where attention_mask is 1 (so EOS stays a target even when pad == eos,
    which ``DataCollatorForLanguageModeling(mlm=False)`` would hide); mlm = :func:`mask_tokens`;
    rows that already carry labels (fixed eval masks, sliding windows) keep them."""

    def __init__(self, tokenizer: Any, objective: str, options: Any, seed: int):
        self.tokenizer = tokenizer
        self.objective = objective
        self.options = options
        self.seed = seed
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._rng = None
        self._rng_key = None

    def rng(self) -> Any:
        """One generator per process / dataloader worker, seeded from the run seed."""
        import os

        import numpy as np
        import torch

        info = torch.utils.data.get_worker_info()
        key = (os.getpid(), info.id if info else -1)
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng([self.seed, key[1] + 1])
            self._rng_key = key
        return self._rng

    def __call__(self, features: list[dict]) -> dict:
        import numpy as np
        import torch

        n, width = len(features), max(len(f["input_ids"]) for f in features)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        attention = np.zeros((n, width), dtype=np.int64)
        has_labels = "labels" in features[0]
        labels = np.full((n, width), -100, dtype=np.int64) if has_labels else None
        special = np.ones((n, width), dtype=bool)
        starts = np.ones((n, width), dtype=bool) if "word_starts" in features[0] else None
        for i, f in enumerate(features):
            length = len(f["input_ids"])
            ids[i, :length] = f["input_ids"]
            attention[i, :length] = 1
            if has_labels:
                labels[i, :length] = f["labels"]
            if "special_tokens_mask" in f:
                special[i, :length] = np.asarray(f["special_tokens_mask"], dtype=bool)
            else:
                special[i, :length] = False
            if starts is not None:
                starts[i, :length] = np.asarray(f["word_starts"], dtype=bool)
        if not has_labels:
            if self.objective == "mlm":
                ids, labels = mask_tokens(
                    ids, special, starts, self.rng(), self.options, self.tokenizer.mask_token_id, len(self.tokenizer)
                )
            else:
                labels = np.where(attention == 1, ids, -100)
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(labels),
        }
