"""The TFDS builder of the concept set: prepared and read without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cnnvis_jax.data import concepts, tfds_concepts
from cnnvis_jax.errors import DataError, InputError

_ROUND_TRIP = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from cnnvis_jax.data import concepts, tfds_concepts

    data_dir = sys.argv[1]
    path = tfds_concepts.build_tfds(data_dir, train=12, val=5, image_size=40, seed=9)
    report = {"tf_after_build": "tensorflow" in sys.modules, "path": str(path)}
    for split, n in (("train", 12), ("val", 5)):
        src = tfds_concepts.tfds_source(data_dir, split)
        ref = concepts.ConceptSet(n, split=split, seed=9, image_size=40)
        assert len(src) == n, (split, len(src))
        for i in range(n):
            a, b = src[i], ref[i]
            assert a["index"] == i and a["target"] == b["target"], i
            assert a["scalar"] == b["scalar"], i
            assert a["image"].dtype == np.uint8 and np.array_equal(a["image"], b["image"]), i
            for c in concepts.PIXEL_CATEGORIES:
                assert a["pixel"][c].dtype == np.int32, c
                assert np.array_equal(a["pixel"][c], b["pixel"][c]), (i, c)
        got, want = src.batch([4, 0, 2]), ref.batch([4, 0, 2])
        for k in ("image", "target", "index", "facet"):
            assert np.array_equal(got[k], want[k]), k
        assert np.array_equal(got["scalar"]["scene"], want["scalar"]["scene"])
        for c in concepts.PIXEL_CATEGORIES:
            assert np.array_equal(got["pixel"][c], want["pixel"][c]), c
    # reading through tfds.data_source by name works too
    import tensorflow_datasets as tfds
    name = "cnnvis_concepts/" + path.parent.name
    ds = tfds.data_source(name, data_dir=data_dir)
    assert int(ds["train"][3]["index"]) == 3
    report["tf_after_read"] = "tensorflow" in sys.modules
    report["class_names"] = list(src.class_names)
    print(json.dumps(report))
    """
)


def test_build_and_read_without_tensorflow(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _ROUND_TRIP, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {
        "tf_after_build": False,
        "tf_after_read": False,
        "path": report["path"],
        "class_names": list(tfds_concepts.concepts.CLASS_NAMES),
    }
    assert report["path"].endswith("cnnvis_concepts/s40_seed9_object_train12_val5/1.0.0")


def test_scene_target_and_config_choice(tmp_path):
    tfds_concepts.build_tfds(tmp_path, train=4, val=0, image_size=32, seed=1, target="scene")
    path = tfds_concepts.build_tfds(tmp_path, train=3, val=0, image_size=32, seed=1)
    with pytest.raises(InputError, match="config"):
        tfds_concepts.tfds_source(tmp_path, "train")
    src = tfds_concepts.tfds_source(tmp_path, "train", config="s32_seed1_scene_train4")
    assert src.class_names == tfds_concepts.concepts.SCENE_CLASS_NAMES and len(src) == 4
    ref = tfds_concepts.concepts.ConceptSet(4, seed=1, image_size=32, target="scene")
    assert [src[i]["target"] for i in range(4)] == [ref[i]["target"] for i in range(4)]
    direct = tfds_concepts.tfds_source(path, "train")  # the dataset directory itself
    assert len(direct) == 3
    with pytest.raises(InputError, match="split"):
        tfds_concepts.tfds_source(path, "val")
    with pytest.raises(InputError, match="0..2"):
        direct[3]
    assert direct.batch([])["image"].shape == (0, 32, 32, 3)
    np.testing.assert_array_equal(direct.batch([1])["image"][0], direct[1]["image"])


def test_errors(tmp_path):
    with pytest.raises(DataError, match="build_tfds"):
        tfds_concepts.tfds_source(tmp_path, "train")
    with pytest.raises(DataError):
        tfds_concepts.tfds_source(tmp_path / "missing", "train")
    with pytest.raises(InputError):
        tfds_concepts.build_tfds(tmp_path, train=0, val=0)
    with pytest.raises(InputError, match="image_size"):
        tfds_concepts.build_tfds(tmp_path, train=2, image_size=8)
    with pytest.raises(InputError, match="target"):
        tfds_concepts.build_tfds(tmp_path, train=2, target="places")


def test_module_import_is_light():
    code = (
        "import sys, cnnvis_jax.data.tfds_concepts as t; "
        "print('tensorflow_datasets' in sys.modules, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_generated_tfds_data_is_read_by_the_commands(tmp_path, capsys):
    from cnnvis_jax.cli import main
    from cnnvis_jax.data import open_dataset

    out = tmp_path / "tfds"
    assert main(["data", "generate", "--format", "tfds", "--out", str(out), "--train", "6",
                 "--val", "4", "--seed", "3"]) == 0  # fmt: skip
    assert main(["data", "inspect", f"tfds:{out}"]) == 0
    assert "split 'val', 4 images 64x64" in capsys.readouterr().out
    source = open_dataset(f"tfds:{out}")
    reference = concepts.ConceptSet(4, split="val", seed=3)
    assert np.array_equal(source[2]["image"], reference[2]["image"])
    assert len(open_dataset(f"tfds:{out}", split="train")) == 6
    assert main(["diagnose", "--model", "conceptnet", "--dataset", f"tfds:{out}",
                 "--out", str(tmp_path / "d"), "--quiet"]) == 0  # fmt: skip
    assert (tmp_path / "d" / "diagnosis.json").is_file()
