"""The Fashion-MNIST subset kept in the repository for the demo: what the code expects of it."""

from __future__ import annotations

import numpy as np
import pytest

from dlpipe.datasets import fashion_mnist as fm
from orchestrator.commands import demo
from orchestrator.commands.fashion_mnist import BUNDLED_DIR, BUNDLED_SIZES


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_bundled_subset_reads_as_fashion_mnist(split):
    images, labels = fm.load_fashion_mnist(split, BUNDLED_DIR, download=False)
    assert images.shape == (BUNDLED_SIZES[split], 28, 28) and images.dtype == np.uint8
    assert labels.shape == (BUNDLED_SIZES[split],)
    counts = np.bincount(labels, minlength=len(fm.FASHION_MNIST_CLASSES))
    assert len(counts) == len(fm.FASHION_MNIST_CLASSES) and counts.min() >= BUNDLED_SIZES[split] // 20, counts
    assert images.std() > 40      # pictures, not a blank or constant file


def test_the_bundled_subset_carries_its_licence_and_the_demo_uses_all_of_it():
    licence = (BUNDLED_DIR / "LICENSE").read_text()
    assert "MIT" in licence and "Zalando SE" in licence and "Permission is hereby granted" in licence
    assert demo.FASHION_DEFAULTS["images"] == BUNDLED_SIZES["train"]
    assert "--bundled" in demo.first_step(BUNDLED_SIZES["train"])
    assert "--bundled" not in demo.first_step(BUNDLED_SIZES["train"] + 1)     # more: the full set


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_bundled_subset_is_the_first_images_of_the_full_set(split):
    try:
        full_images, full_labels = fm.load_fashion_mnist(split, download=False)
    except FileNotFoundError:
        pytest.skip("the full Fashion-MNIST is not on this machine (Debian package dataset-fashion-mnist)")
    images, labels = fm.load_fashion_mnist(split, BUNDLED_DIR, download=False)
    n = BUNDLED_SIZES[split]
    assert np.array_equal(images, full_images[:n]) and np.array_equal(labels, full_labels[:n])
