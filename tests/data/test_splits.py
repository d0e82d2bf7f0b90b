"""split_indices / split_dataset / SeededShuffleSampler: exact sizes, stratified, reproducible."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from lightning_tricks.functional import (
    SeededShuffleSampler,
    resolve_split_sizes,
    split_dataset,
    split_indices,
)


@pytest.mark.parametrize(
    ("n", "sizes", "expected"),
    [
        (10, [0.8, 0.1, 0.1], [8, 1, 1]),
        (10, [None, 0.1, 0.1], [8, 1, 1]),
        (10, [None, 3, 0], [7, 3, 0]),
        (7, [1 / 3, 1 / 3, 1 / 3], [3, 2, 2]),
        (10, [0.5, 0.2], [5, 2]),  # fractions may leave samples out
        (5, [5, None], [5, 0]),
    ],
)
def test_resolve_split_sizes(n, sizes, expected):
    assert resolve_split_sizes(n, sizes) == expected


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        ([0.8, 0.3], "ask for 11 samples"),
        ([None, None], "only one split size may be None"),
        ([-1, None], r"sizes\[0\]"),
        ([1.5, None], r"sizes\[0\].*fraction"),
        ([float("nan"), None], r"sizes\[0\]"),
        (["half", None], r"sizes\[0\]"),
        ([True, None], r"sizes\[0\]"),
    ],
)
def test_bad_sizes_are_named(sizes, match):
    with pytest.raises((TypeError, ValueError), match=match):
        resolve_split_sizes(10, sizes)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), a=st.floats(0, 1), b=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_splits_are_disjoint_exact_and_cover_with_a_rest(n, a, b, seed):
    b = b * (1 - a)
    parts = split_indices(n, [a, b, None], seed=seed)
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n))
    assert [len(p) for p in parts] == resolve_split_sizes(n, [a, b, None])
    assert all(p == sorted(p) for p in parts)


def test_seeded_and_independent_of_global_rng():
    state = torch.get_rng_state()
    a = split_indices(50, [0.6, None], seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator was not touched
    torch.manual_seed(1234)
    assert split_indices(50, [0.6, None], seed=1) == a
    assert split_indices(50, [0.6, None], seed=2) != a


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=2, max_size=5),
    frac=st.floats(0.05, 0.95),
    seed=st.integers(0, 1000),
)
def test_stratified_splits_keep_class_proportions(counts, frac, seed):
    labels = [c for c, k in enumerate(counts) for _ in range(k)]
    n = len(labels)
    for sizes, tolerance in (([frac, None], 1.0), ([frac, (1 - frac) / 2, None], 2.0)):
        parts = split_indices(n, sizes, seed=seed, labels=labels)
        assert sorted(i for p in parts for i in p) == list(range(n))
        assert [len(p) for p in parts] == resolve_split_sizes(n, sizes)
        for part in parts:
            got = Counter(labels[i] for i in part)
            for c, k in enumerate(counts):
                assert abs(got[c] - k * len(part) / n) < tolerance + 1e-9, (sizes, c, got, counts)


def test_stratification_is_better_than_chance_on_a_rare_class():
    labels = [1] * 5 + [0] * 95
    for seed in range(20):
        _, val = split_indices(100, [None, 0.2], seed=seed, labels=labels)
        assert sum(labels[i] for i in val) == 1  # exactly its share, on every seed


def test_labels_of_wrong_length_or_unhashable():
    with pytest.raises(ValueError, match="labels"):
        split_indices(5, [None], labels=[0, 1])
    with pytest.raises(TypeError, match="labels"):
        split_indices(2, [None], labels=[[0], [1]])


def test_split_dataset_label_sources():
    x, y = torch.arange(40.0), torch.arange(40) % 4
    ds = TensorDataset(x, y)
    by_index = split_dataset(ds, [0.5, None], labels=1, seed=0)
    by_tensor = split_dataset(ds, [0.5, None], labels=y, seed=0)
    by_callable = split_dataset(ds, [0.5, None], labels=lambda sample: int(sample[1]), seed=0)
    ds.targets = y.tolist()
    by_attr = split_dataset(ds, [0.5, None], labels="targets", seed=0)
    expected = [s.indices for s in by_index]
    for other in (by_tensor, by_callable, by_attr):
        assert [s.indices for s in other] == expected
    assert Counter(int(y[i]) for i in expected[0]) == {0: 5, 1: 5, 2: 5, 3: 5}
    with pytest.raises(ValueError, match="labels"):
        split_dataset(ds, [None], labels="classes")
    with pytest.raises(ValueError, match="labels"):
        split_dataset(list(zip(x, y)), [None], labels=5)
    with pytest.raises(TypeError, match="dataset"):
        split_dataset(iter(range(3)), [None])


def test_seeded_shuffle_sampler_per_epoch_orders():
    s = SeededShuffleSampler(20, seed=3)
    orders = []
    for epoch in (0, 1, 0):
        s.set_epoch(epoch)
        orders.append(list(s))
    assert orders[0] == orders[2] != orders[1]
    assert sorted(orders[1]) == list(range(20)) and len(s) == 20
    assert list(SeededShuffleSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="epoch"):
        s.set_epoch(-1)
