"""What a survey computes: :class:`SurveyConfig` and its ``quick`` / ``full`` presets."""

from __future__ import annotations

import dataclasses

from cnnvis_jax.errors import InputError, did_you_mean

REVISION = 2
"""Version of what the stages draw; part of every stage's fingerprint, so a survey
folder made by an older version re-runs its stages instead of mixing the two."""

STAGES = (
    "network",
    "am",
    "deconv",
    "inversion",
    "decoders",
    "dissection",
    "monitoring",
    "diagnosis",
    "conditions",
    "robustness",
    "trust",
    "beyond",
)
"""The survey's stages, in the order they run and appear in the report."""

VARIANTS: dict[str, dict[str, object]] = {
    "baseline": {},
    "no_dropout": {"dropout": False},
    "batchnorm": {"batchnorm": True},
    "seed1": {"seed": 1},
    "seed2": {"seed": 2},
    "scene": {"target": "scene"},
    "conv1_11x11_stride4": {"conv1_kernel": 11, "conv1_stride": 4},
    "conv1_7x7_stride2": {"conv1_kernel": 7, "conv1_stride": 2},
}
"""Condition name -> the :class:`~cnnvis_jax.train.TrainConfig` fields it changes
(``seed`` offsets are added to the recipe's seed)."""


@dataclasses.dataclass(frozen=True)
class SurveyConfig:
    """Sizes of every stage (see :data:`QUICK` and :data:`FULL`).

    Attributes:
      mode: the preset's name (``quick``, ``full``), recorded in the report.
      seed: PRNG seed of every random choice (AM, inversion, data order).
      layers: at most this many spatial layers (evenly spaced, the last included).
      sample_images: images the units of AM and DeconvNet are chosen on (the most
        strongly responding ones, so no dead unit is drawn).
      am_units: units per layer drawn by AM; am_presets: the AM presets;
      am_steps: steps of each (None: the preset's own).
      classes: class visualizations at the logits layer (first ``classes`` classes).
      mfv_classes, mfv_facets, mfv_images: multifaceted visualization of the first
        ``mfv_classes`` classes, ``mfv_facets`` facets each, found among
        ``mfv_images`` images.
      deconv_images: images searched for each unit's top images; deconv_top: top-k.
      inversion_presets, inversion_steps: regularized inversion settings (the
        perturbation study inverts the last surveyed layer with the first preset).
      decoder_steps: training steps of the UpconvNet decoders (the last surveyed layer
        and the first fully connected one; the latter also drives DGN-AM).
      dissection_images: concept images dissected; net2vec_train, net2vec_val,
        net2vec_epochs: Net2Vec's data and epochs.
      monitor_units: units per layer followed across the saved training epochs.
      diagnosis_images: images of the dead-unit and aliasing measurements.
      conditions_variants: the training conditions trained and dissected (names of
        :data:`VARIANTS`); conditions_stop_epoch:
        each is trained with the full schedule but stopped after this epoch (None: to
        the end); conditions_images: concept images each is dissected on.
      robustness_images: images attacked; robustness_epsilons: L-inf radii in 1/255
        steps of the 8-bit scale; robustness_steps: PGD's steps.
      trust_units: units of the last layer scored (AM presets' renderings);
      trust_seeds: renderings per unit (diversity); trust_k: top natural images per
      unit; trust_images: images of the weight-randomization test of the rules.
      beyond_images: concept images of the compositional search and the atlas;
      beyond_length: longest formula; beyond_explained: predictions explained by
      concept relevance, beyond_concepts: concepts shown per prediction,
      beyond_refs: reference images per concept (found among ``sample_images``);
      beyond_grid, beyond_points, beyond_steps: the atlas's grid side, activation
      vectors and render steps.
    """

    mode: str = "quick"
    seed: int = 0
    layers: int = 5
    sample_images: int = 256
    am_units: int = 4
    am_presets: tuple[str, ...] = ("yosinski2", "lucid")
    am_steps: int | None = 96
    classes: int = 4
    mfv_classes: int = 3
    mfv_facets: int = 4
    mfv_images: int = 1000
    deconv_images: int = 512
    deconv_top: int = 9
    inversion_presets: tuple[str, ...] = ("mahendran2015", "mahendran2016")
    inversion_steps: int | None = 150
    decoder_steps: int = 150
    dissection_images: int = 1000
    net2vec_train: int = 400
    net2vec_val: int = 200
    net2vec_epochs: int = 4
    monitor_units: int = 4
    diagnosis_images: int = 512
    conditions_variants: tuple[str, ...] = (
        "baseline", "no_dropout", "batchnorm", "seed1", "conv1_11x11_stride4",
    )  # fmt: skip
    conditions_stop_epoch: int | None = 1
    conditions_images: int = 500
    robustness_images: int = 128
    robustness_epsilons: tuple[int, ...] = (2, 8)
    robustness_steps: int = 10
    trust_units: int = 4
    trust_seeds: int = 2
    trust_k: int = 8
    trust_images: int = 8
    beyond_images: int = 500
    beyond_length: int = 3
    beyond_explained: int = 3
    beyond_concepts: int = 4
    beyond_refs: int = 4
    beyond_grid: int = 8
    beyond_points: int = 2000
    beyond_steps: int = 64

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int) and field.name != "seed" and value < 1:
                raise InputError(f"{field.name} must be at least 1, got {value}.")
        if self.seed < 0:
            raise InputError(f"seed must be >= 0, got {self.seed}.")
        for name in self.conditions_variants:
            if name not in VARIANTS:
                raise InputError(
                    f"unknown training condition {name!r}; " + did_you_mean(name, list(VARIANTS))
                )
        if not self.robustness_epsilons or min(self.robustness_epsilons) < 1:
            raise InputError(
                f"robustness_epsilons must be radii >= 1 (in 1/255), got {self.robustness_epsilons}."
            )

    def stage_settings(self, stage: str) -> dict:
        """The settings that change ``stage``'s output (its resume fingerprint)."""
        prefix = {"network": ("layers",), "am": ("am_", "classes", "mfv_", "sample_", "layers")}
        prefix |= {"monitoring": ("monitor_", "am_", "deconv_", "layers")}
        prefix |= {"decoders": ("decoder_", "classes", "am_steps", "sample_", "layers")}
        prefix |= {"deconv": ("deconv_", "sample_", "layers"), "inversion": ("inversion_",)}
        prefix |= {"dissection": ("dissection_", "net2vec_"), "diagnosis": ("diagnosis_",)}
        prefix |= {"conditions": ("conditions_", "layers")}
        prefix |= {"robustness": ("robustness_", "inversion_", "dissection_", "layers")}
        prefix |= {"trust": ("trust_", "am_presets", "am_steps", "sample_", "layers")}
        prefix |= {"beyond": ("beyond_", "sample_", "layers")}
        keys = prefix[stage]
        chosen = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k == "seed" or any(k.startswith(p) for p in keys)
        }
        return {"revision": REVISION, **chosen}


QUICK = SurveyConfig()
FULL = SurveyConfig(
    mode="full",
    sample_images=2000,
    am_units=8,
    am_steps=None,
    classes=8,
    mfv_facets=10,
    mfv_images=5000,
    deconv_images=5000,
    inversion_steps=None,
    decoder_steps=400,
    dissection_images=20000,
    net2vec_train=2000,
    net2vec_val=1000,
    net2vec_epochs=30,
    monitor_units=8,
    diagnosis_images=2000,
    conditions_variants=(
        "baseline",
        "no_dropout",
        "batchnorm",
        "seed1",
        "seed2",
        "scene",
        "conv1_11x11_stride4",
        "conv1_7x7_stride2",
    ),  # fmt: skip
    conditions_stop_epoch=None,
    conditions_images=2000,
    robustness_images=1000,
    robustness_steps=20,
    trust_units=8,
    trust_k=16,
    trust_images=16,
    beyond_images=2000,
    beyond_concepts=6,
    beyond_refs=6,
    beyond_grid=16,
    beyond_points=8000,
    beyond_steps=128,
)


def parse_only(text: str | None) -> tuple[str, ...]:
    """Stages named by ``--only`` (``"am,dissection"``), in survey order; all when None."""
    if not text:
        return STAGES
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in STAGES:
            raise InputError(f"--only: unknown stage {n!r}; " + did_you_mean(n, STAGES))
    if not names:
        raise InputError(f"--only names no stage; choose from {', '.join(STAGES)}.")
    return tuple(s for s in STAGES if s in names)
