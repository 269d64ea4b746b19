"""MFV's facet discovery gives the same facets, to the last bit, on 8 devices as on one
(the features are computed with a fixed number of images per device)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from eight_devices import run_on_eight_devices  # noqa: E402

FACETS = """
import numpy as np
from cnnvis_jax import zoo
from cnnvis_jax.am import mfv
from cnnvis_jax.data import ConceptSet

model = zoo.random_model("conceptnet", warn=False)
source = ConceptSet(240, split="val")
found = mfv.facets(model, source, 0, k=3, per_facet=4, pca_dim=10, batch_size=8)
diversity = mfv.facet_diversity(model, source, found.indices, ["conv5", "fc7"], k=3,
                                batch_size=8)
np.savez(OUT, labels=found.labels, members=found.members, embedding=found.embedding,
         mean_images=found.mean_images, diversity=np.array(list(diversity.values())))
"""


def test_facets_on_eight_devices_equal_one_device(tmp_path):
    one, eight = tmp_path / "one.npz", tmp_path / "eight.npz"
    exec(FACETS, {"OUT": str(one)})  # this process: one CPU device
    run_on_eight_devices(f"OUT = {str(eight)!r}\n" + FACETS)
    a, b = np.load(one), np.load(eight)
    assert len(np.unique(a["labels"])) == 3
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
