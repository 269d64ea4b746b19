"""The concept set as a TensorFlow Datasets builder, prepared and read without TensorFlow.

The builder (:func:`builder_class`, also reachable as ``ConceptSetBuilder``) is a
``tfds.core.GeneratorBasedBuilder`` named ``cnnvis_concepts`` whose features are plain
``tfds.features.Tensor`` s (``tfds.features.Image`` would need TensorFlow to encode
PNGs)::

    image:   uint8 (S, S, 3)
    object, part, texture, color: uint8 (S, S) label numbers (uint16 if the
             vocabulary ever exceeds 255 labels)
    scene:   int32 (1,) label number
    target:  int32 ()  class index (object or scene, as configured)
    facet:   int32 ()  facet of the main object
    index:   int64 ()  index of the image in the generator's split

It is written as ArrayRecord (``file_format="array_record"``) with shuffling disabled,
so record ``i`` of a split is generator image ``i``. TFDS (4.9) serializes Tensor
features with its own numpy example serializer and writes ArrayRecord through
``array_record``; neither path imports TensorFlow, which :func:`build_tfds` checks.
Reading goes through ``tfds.builder_from_directory(...).as_data_source(split)``
(``tfds.data_source`` for a directory), also TensorFlow-free.

The configuration (:class:`ConceptConfig`) fixes the image size, the seed, the target
and the number of examples per split; its name encodes them, so several
configurations can live in one ``data_dir``.

Importing this module does not import ``tensorflow_datasets``; the first use does.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from pathlib import Path

import numpy as np

from cnnvis_jax.data import concepts
from cnnvis_jax.data.types import Sample, Vocabulary
from cnnvis_jax.errors import DataError, InputError
from cnnvis_jax.report.files import write_json

DATASET_NAME = "cnnvis_concepts"
VERSION = "1.0.0"
_META_FILE = "cnnvis_concepts.json"
_BATCH = 256


def _tfds():
    import tensorflow_datasets as tfds

    return tfds


def config_name(image_size: int, seed: int, target: str, counts: dict[str, int]) -> str:
    """The builder-config name of a parameter set, e.g. ``s64_seed0_object_train1000_val200``."""
    splits = "_".join(f"{k}{v}" for k, v in counts.items() if v > 0)
    return f"s{image_size}_seed{seed}_{target}_{splits}"


@functools.cache
def builder_class():
    """The ``tfds.core.GeneratorBasedBuilder`` subclass (created on first use).

    Its configuration class is :func:`config_class`. Creating it registers the name
    ``cnnvis_concepts`` with TFDS.
    """
    tfds = _tfds()
    config_cls = config_class()

    class ConceptSetBuilder(tfds.core.GeneratorBasedBuilder):
        """The embedded concept set (see cnnvis_jax.data.concepts)."""

        name = DATASET_NAME
        # TFDS derives this from the package resources, which needs the optional
        # `importlib_resources` package for installed packages; this module is the code.
        code_path = Path(__file__)
        VERSION = tfds.core.Version(VERSION)
        RELEASE_NOTES = {str(VERSION): "First release."}
        BUILDER_CONFIGS = [
            config_cls(
                name=config_name(64, 0, "object", {"train": 1000, "val": 200}),
                description="64x64, seed 0, target object, 1000 train and 200 val examples",
            )
        ]

        def _info(self):
            cfg = self.builder_config
            size = cfg.image_size
            vocab = concepts.concept_vocabulary()
            mask = np.uint8 if vocab.num_labels <= 256 else np.uint16
            tensor = tfds.features.Tensor
            features = {"image": tensor(shape=(size, size, 3), dtype=np.uint8)}
            for category in concepts.PIXEL_CATEGORIES:
                features[category] = tensor(shape=(size, size), dtype=mask)
            features.update(
                scene=tensor(shape=(1,), dtype=np.int32),
                target=tensor(shape=(), dtype=np.int32),
                facet=tensor(shape=(), dtype=np.int32),
                index=tensor(shape=(), dtype=np.int64),
            )
            return tfds.core.DatasetInfo(
                builder=self,
                description=(
                    "Synthetic scenes of objects built from parts, with Broden-style "
                    "pixel-level object, part, texture and color labels and an image-level "
                    f"scene label. Target: {cfg.target}."
                ),
                features=tfds.features.FeaturesDict(features),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            cfg = self.builder_config
            return {
                split: self._generate_examples(split, n)
                for split, n in cfg.counts().items()
                if n > 0
            }

        def _generate_examples(self, split, n):
            cfg = self.builder_config
            mask = self.info.features["object"].np_dtype
            for start in range(0, n, _BATCH):
                idx = np.arange(start, min(start + _BATCH, n))
                out = concepts.generate_batch(cfg.seed, split, idx, cfg.image_size)
                target = out["object_class"] if cfg.target == "object" else out["scene_class"]
                for j, i in enumerate(idx.tolist()):
                    example = {"image": out["image"][j]}
                    for category in concepts.PIXEL_CATEGORIES:
                        example[category] = out["pixel"][category][j, 0].astype(mask)
                    example.update(
                        scene=out["scalar"]["scene"][j],
                        target=np.int32(target[j]),
                        facet=np.int32(out["facet"][j]),
                        index=np.int64(i),
                    )
                    yield i, example

    return ConceptSetBuilder


@functools.cache
def config_class():
    """The ``tfds.core.BuilderConfig`` dataclass of the builder (created on first use).

    Fields: ``image_size``, ``seed``, ``target`` and ``train``/``val``/``test`` (numbers
    of examples), besides TFDS's ``name`` (see :func:`config_name`).
    """
    tfds = _tfds()

    @dataclasses.dataclass(eq=False)
    class ConceptConfig(tfds.core.BuilderConfig):
        image_size: int = 64
        seed: int = 0
        target: str = "object"
        train: int = 1000
        val: int = 200
        test: int = 0

        def counts(self) -> dict[str, int]:
            return {"train": self.train, "val": self.val, "test": self.test}

    return ConceptConfig


def __getattr__(name):
    if name == "ConceptSetBuilder":
        return builder_class()
    if name == "ConceptConfig":
        return config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_tfds(
    data_dir: str | os.PathLike,
    *,
    train: int = 1000,
    val: int = 200,
    test: int = 0,
    image_size: int = 64,
    seed: int = 0,
    target: str = "object",
) -> Path:
    """Generates the concept set and prepares it as a TFDS data set (ArrayRecord).

    Args:
      data_dir: TFDS data directory (created if needed).
      train, val, test: numbers of examples per split (0 leaves a split out; at least
        one must be positive). Split ``s`` holds generator images 0..n-1 of split ``s``.
      image_size: S (>= 32).
      seed: data set seed (>= 0).
      target: "object" or "scene".

    Returns:
      The prepared data set's directory ``data_dir/cnnvis_concepts/<config>/1.0.0``.
      Preparing again with the same arguments reuses it.

    Raises:
      InputError: bad arguments.
      DataError: if preparing imported TensorFlow (it must not).
    """
    counts = {
        "train": concepts._check_int("train", train, 0),
        "val": concepts._check_int("val", val, 0),
        "test": concepts._check_int("test", test, 0),
    }
    if not any(counts.values()):
        raise InputError(
            "build_tfds needs at least one split with examples (train, val or test > 0)."
        )
    image_size = concepts._check_int("image_size", image_size, concepts.MIN_IMAGE_SIZE)
    seed = concepts._check_int("seed", seed, 0, 2**63 - 1)
    target = concepts._check_choice("target", target, concepts.TARGETS)
    had_tf = "tensorflow" in sys.modules
    config = config_class()(
        name=config_name(image_size, seed, target, counts),
        description=f"{image_size}x{image_size}, seed {seed}, target {target}, {counts}",
        image_size=image_size,
        seed=seed,
        target=target,
        **counts,
    )
    builder = builder_class()(
        data_dir=os.fspath(data_dir), config=config, file_format="array_record"
    )
    builder.download_and_prepare()
    if not had_tf and "tensorflow" in sys.modules:
        raise DataError(
            "preparing the TFDS concept set imported TensorFlow; it must not (report this)."
        )
    out = Path(builder.data_dir)
    meta = {
        "image_size": image_size,
        "seed": seed,
        "target": target,
        "counts": counts,
        "class_names": list(_class_names(target)),
    }
    write_json(out / _META_FILE, meta)
    return out


def _class_names(target: str) -> tuple[str, ...]:
    return concepts.CLASS_NAMES if target == "object" else concepts.SCENE_CLASS_NAMES


def _dataset_dir(data_dir: Path, config: str | None) -> Path:
    if (data_dir / "dataset_info.json").is_file():
        return data_dir
    root = data_dir / DATASET_NAME
    if not root.is_dir():
        raise DataError(
            f"no prepared {DATASET_NAME} data set under {data_dir}; run build_tfds({str(data_dir)!r}) first."
        )
    found = sorted(
        p.parent.parent.name
        for p in root.glob(f"*/{VERSION}/dataset_info.json")
        if (p.parent / _META_FILE).is_file()
    )
    if config is None:
        if len(found) != 1:
            listed = ", ".join(found) or "none"
            raise InputError(
                f"{root} holds {len(found)} prepared configurations ({listed}); pass config=NAME."
            )
        config = found[0]
    elif config not in found:
        raise InputError(
            f"no prepared configuration {config!r} in {root}; prepared: {', '.join(found) or 'none'}."
        )
    return root / config / VERSION


class TfdsConceptSource:
    """A prepared TFDS concept set split as a random-access source (types.py form).

    ``source[i]`` gives the same sample as ``ConceptSet(..)[i]`` of the generator it was
    built from. Attributes: ``vocabulary``, ``class_names``, ``image_size``, ``split``,
    ``target``, ``directory``.
    """

    def __init__(self, directory: Path, split: str):
        tfds = _tfds()
        meta_path = directory / _META_FILE
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(
                f"{meta_path} is missing or unreadable ({e}); rebuild with build_tfds."
            ) from e
        builder = tfds.builder_from_directory(os.fspath(directory))
        splits = list(builder.info.splits.keys())
        if split not in splits:
            raise InputError(
                f"split {split!r} is not in {directory}; available: {', '.join(splits)}."
            )
        self.directory = directory
        self.split = split
        self.image_size = int(meta["image_size"])
        self.target = meta["target"]
        self.class_names: tuple[str, ...] = tuple(meta["class_names"])
        self.vocabulary: Vocabulary = concepts.concept_vocabulary()
        self._source = builder.as_data_source(split=split)

    def __len__(self) -> int:
        return len(self._source)

    def __repr__(self) -> str:
        return f"TfdsConceptSource({str(self.directory)!r}, split={self.split!r})"

    def _check(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise InputError(f"index must be an integer, got {index!r}.")
        index = int(index)
        if not 0 <= index < len(self):
            raise InputError(
                f"index {index} is out of range; valid indices are 0..{len(self) - 1}."
            )
        return index

    @staticmethod
    def _sample(record: dict, index: int) -> Sample:
        return {
            "image": np.asarray(record["image"], np.uint8),
            "pixel": {c: np.asarray(record[c], np.int32)[None] for c in concepts.PIXEL_CATEGORIES},
            "scalar": {"scene": tuple(int(v) for v in np.asarray(record["scene"]))},
            "target": int(record["target"]),
            "index": index,
        }

    def __getitem__(self, index) -> Sample:
        index = self._check(index)
        return self._sample(self._source[index], index)

    def batch(self, indices) -> dict:
        """Reads records by index; the same dict as :meth:`ConceptSet.batch`."""
        idx = [self._check(i) for i in np.asarray(indices).reshape(-1).tolist()]
        records = self._source.__getitems__(idx) if idx else []
        s = self.image_size
        return {
            "image": np.stack([r["image"] for r in records])
            if idx
            else np.zeros((0, s, s, 3), np.uint8),
            "target": np.array([r["target"] for r in records], np.int32),
            "pixel": {
                c: (
                    np.stack([r[c] for r in records]).astype(np.int32)[:, None]
                    if idx
                    else np.zeros((0, 1, s, s), np.int32)
                )
                for c in concepts.PIXEL_CATEGORIES
            },
            "scalar": {"scene": np.array([r["scene"] for r in records], np.int32).reshape(-1, 1)},
            "index": np.array(idx, np.int64),
            "facet": np.array([r["facet"] for r in records], np.int32),
        }


def tfds_source(
    data_dir: str | os.PathLike, split: str = "train", *, config: str | None = None
) -> TfdsConceptSource:
    """Opens a prepared split through ``tfds`` (ArrayRecord data source, no TensorFlow).

    Args:
      data_dir: the TFDS data directory given to :func:`build_tfds`, or the prepared
        data set directory it returned.
      split: "train", "val" or "test" (must have been prepared).
      config: configuration name (see :func:`config_name`); needed only when
        ``data_dir`` holds several.
    """
    path = Path(data_dir)
    if not path.is_dir():
        raise DataError(f"{path} is not a directory; run build_tfds({str(path)!r}) first.")
    return TfdsConceptSource(_dataset_dir(path, config), split)
