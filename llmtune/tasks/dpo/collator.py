"""The dpo batch collator: B pairs as 2B padded rows.

Module level stays torch-free.
"""

from __future__ import annotations


class PairCollator:
    """Pads a batch of B pairs into 2B right-padded rows, chosen first then rejected: ``input_ids``,
    ``attention_mask``, ``labels`` (-100 except answer tokens), ``row`` (the pair's row in its
    split) and, when the data has them, precomputed reference log-probs."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        seqs, labels = [], []
        for side in ("chosen_ids", "rejected_ids"):
            for f in features:
                seqs.append(list(f["prompt_ids"]) + list(f[side]))
                labels.append([-100] * len(f["prompt_ids"]) + list(f[side]))
        width = max(len(s) for s in seqs)
        batch = {
            "input_ids": torch.tensor([s + [self.pad] * (width - len(s)) for s in seqs]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs]),
            "labels": torch.tensor([x + [-100] * (width - len(x)) for x in labels]),
            "row": torch.tensor([f.get("row", i) for i, f in enumerate(features)]),
        }
        if "ref_chosen_logps" in features[0]:
            batch["ref_logps"] = torch.tensor(
                [f["ref_chosen_logps"] for f in features] + [f["ref_rejected_logps"] for f in features],
                dtype=torch.float32,
            )
        return batch
