"""Shared runner pieces: the length-grouped sampler and the exact classification eval loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmtune.metrics import classification_loss
from llmtune.trainer import LengthGroupedSampler, length_grouped_indices


def test_length_grouped_indices_is_a_permutation_with_homogeneous_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1003).tolist()
    idx = length_grouped_indices(lengths, 16, 8, torch.Generator().manual_seed(0))
    assert sorted(idx) == list(range(1003))
    batches = [idx[i : i + 16] for i in range(0, len(idx), 16)]
    assert len(batches[-1]) == 1003 % 16  # the partial batch stays last
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches[:-1]])
    random_spread = np.mean(
        [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in np.array_split(np.arange(992), 62)]
    )
    assert spread < random_spread / 3  # far less padding than random batches


def test_length_grouped_order_shuffles_batches_and_is_seeded():
    lengths = list(range(1, 257))
    a = length_grouped_indices(lengths, 8, 4, torch.Generator().manual_seed(1))
    b = length_grouped_indices(lengths, 8, 4, torch.Generator().manual_seed(1))
    c = length_grouped_indices(lengths, 8, 4, torch.Generator().manual_seed(2))
    assert a == b and a != c
    firsts = [lengths[a[i]] for i in range(0, 256, 8)]
    assert firsts != sorted(firsts, reverse=True)  # batches are not served longest first


def test_sampler_reseeds_per_epoch():
    sampler = LengthGroupedSampler(list(range(1, 65)), 8, 2, seed=3)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == sorted(first)


@pytest.mark.parametrize("problem", ["single_label", "multi_label", "regression"])
def test_classification_loss_matches_torch(problem):
    torch.manual_seed(0)
    logits = torch.randn(13, 3 if problem != "regression" else 1, dtype=torch.float64)
    if problem == "single_label":
        labels = torch.randint(0, 3, (13,))
        ref = torch.nn.functional.cross_entropy(logits, labels)
    elif problem == "multi_label":
        labels = torch.randint(0, 2, (13, 3)).double()
        ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    else:
        labels = torch.randn(13, dtype=torch.float64)
        ref = torch.nn.functional.mse_loss(logits.squeeze(-1), labels)
    got = classification_loss(problem, logits.numpy(), labels.numpy())
    assert got == pytest.approx(ref.item(), abs=1e-12)
