"""The exported concept set read back through the Broden reader: same images,
same labels (at Broden's half size), same vocabulary."""

import numpy as np
import pytest

from cnnvis_jax.data import open_dataset
from cnnvis_jax.data.broden import BrodenSource, validate
from cnnvis_jax.data.broden_export import downsample_labels, export_broden
from cnnvis_jax.data.concepts import ConceptSet


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    source = ConceptSet(10, split="val", seed=3)
    root = export_broden(source, tmp_path_factory.mktemp("concepts_broden"))
    return source, root


def test_reader_returns_the_generated_samples(exported):
    source, root = exported
    broden = BrodenSource(root)
    assert len(broden) == len(source)
    assert broden.segmentation_size == (32, 32)
    for i in range(len(source)):
        original, read = source[i], broden[i]
        np.testing.assert_array_equal(read["image"], original["image"])
        assert read["scalar"]["scene"] == tuple(original["scalar"]["scene"])
        for category, mask in original["pixel"].items():
            expected = downsample_labels(mask[0], (32, 32))
            if not expected.any():
                assert category not in read["pixel"]
                continue
            np.testing.assert_array_equal(read["pixel"][category][0], expected)


def test_vocabulary_survives_the_round_trip(exported):
    source, root = exported
    read = BrodenSource(root).vocabulary
    original = {lab.number: lab for lab in source.vocabulary.labels}
    for lab in read.labels:
        assert lab.name == original[lab.number].name
        assert lab.category == original[lab.number].category


def test_full_validation_and_dataset_spec(exported):
    source, root = exported
    summary = validate(root, progress=False)
    assert summary["images"] == len(source)
    assert len(open_dataset(f"broden:{root}")) == len(source)
