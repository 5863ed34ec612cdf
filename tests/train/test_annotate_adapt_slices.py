"""The slice choice of experiments/annotate_adapt.py: fixed by N and the labels alone, spread, never repeated."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
from annotate_adapt import Case, choose_slices, labelled_slices  # noqa: E402


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7, 11, 40])
def test_choice_is_spread_distinct_and_ordered(count):
    labelled = list(range(100, 100 + count))
    for n in range(1, count + 1):
        chosen = choose_slices(labelled, n)
        assert len(chosen) == n and chosen == sorted(set(chosen))
        # pick k is the slice holding the centre of the k-th of n equal parts (slice i spans [i, i + 1))
        assert all(2 * n * (z - 100) <= (2 * k + 1) * count < 2 * n * (z - 99) for k, z in enumerate(chosen))
    assert choose_slices(labelled, count) == labelled


def test_known_choices():
    assert choose_slices(list(range(7)), 1) == [3]
    assert choose_slices(list(range(7)), 3) == [1, 3, 5]
    assert choose_slices(list(range(11)), 3) == [1, 5, 9]
    assert choose_slices(["a", "b", "c", "d", "e"], 3) == ["a", "c", "e"]
    with pytest.raises(ValueError):
        choose_slices([1, 2, 3], 4)


def test_user_annotation_and_evaluated_slices():
    labels = np.zeros((6, 16, 16), np.int32)
    labels[1, :5, :5] = 1      # 25 px: annotatable, too small to score
    labels[2:5, :8, :8] = 1    # 64 px: annotatable and scored
    labels[5, 0, :3] = 1       # 3 px: neither
    image = np.arange(labels.size, dtype=np.int16).reshape(labels.shape)
    assert labelled_slices(labels) == [1, 2, 3, 4]
    planes = {z: (image[z], labels[z]) for z in range(6) if labels[z].any()}
    case = Case("toy", "mri", "minmax", planes, labelled_slices(labels), volume=(image, labels))
    chosen = choose_slices(case.annotatable, 2)
    assert chosen == [2, 4]
    (volume, partial), = case.training_samples(chosen)[0]
    assert volume is image and [z for z in range(6) if partial[z].any()] == chosen
    assert np.array_equal(partial[chosen], labels[chosen])
    assert case.evaluation_keys(chosen) == [3]
