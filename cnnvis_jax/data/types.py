"""The in-memory form shared by every data source.

A *source* is random access: ``len(source)`` and ``source[i]`` returning a
:class:`Sample`-shaped dict of numpy arrays::

    {
      "image":  uint8 (H, W, 3) RGB,
      "pixel":  {category: int32 (L, h, w)}   # pixel-level labels, L layers
                                              # (L > 1 for multi-layer parts);
                                              # global label numbers, 0 = none;
                                              # (h, w) may be the image size or
                                              # Broden's half size
      "scalar": {category: tuple[int, ...]}   # image-level labels (scene, ...)
      "target": int                           # class index for training, -1 if none
      "index":  int                           # position in the source
    }

Every source has ``vocabulary`` (a :class:`Vocabulary`, or ``None`` for sources
without concept labels, such as image folders) and ``class_names``.

Label numbering follows Broden: global numbers from 1, 0 = none; each label has a
primary category (the one with the largest coverage) and may belong to several.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, TypedDict

import numpy as np

from cnnvis_jax.errors import InputError, did_you_mean

# Broden's categories, in its reporting order.
CATEGORIES = ("object", "scene", "part", "material", "texture", "color")
PIXEL_LEVEL = ("object", "part", "material", "color")
IMAGE_LEVEL = ("scene", "texture")


class Sample(TypedDict):
    image: np.ndarray
    pixel: dict[str, np.ndarray]
    scalar: dict[str, tuple[int, ...]]
    target: int
    index: int


@dataclasses.dataclass(frozen=True)
class Label:
    """One concept label.

    Attributes:
      number: global label number (>= 1).
      name: Broden-style name (``red-c``, ``street-s``, ``wheel``...).
      categories: the categories it belongs to, primary (largest coverage) first.
      frequency: number of images carrying it (0 when unknown).
      coverage: mean fraction of pixels it covers where present (0 when unknown).
    """

    number: int
    name: str
    categories: tuple[str, ...]
    frequency: int = 0
    coverage: float = 0.0

    @property
    def category(self) -> str:
        return self.categories[0]


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """All labels of a data set, by global number.

    Attributes:
      categories: category names present, in reporting order.
      labels: every label, sorted by number (number 0, "none", is not listed).
    """

    categories: tuple[str, ...]
    labels: tuple[Label, ...]

    def __post_init__(self):
        numbers = [label.number for label in self.labels]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise InputError("vocabulary labels must have unique, sorted numbers.")
        if any(n < 1 for n in numbers):
            raise InputError("label numbers start at 1 (0 means 'no label').")

    @property
    def num_labels(self) -> int:
        """One more than the largest label number (so label arrays index directly)."""
        return (self.labels[-1].number + 1) if self.labels else 1

    def label(self, number: int) -> Label:
        for lab in self.labels:
            if lab.number == number:
                return lab
        raise InputError(
            f"label number {number} is not in the vocabulary (valid: 1..{self.num_labels - 1})."
        )

    def by_name(self, name: str) -> Label:
        for lab in self.labels:
            if lab.name == name:
                return lab
        raise InputError(
            f"no label named {name!r}; " + did_you_mean(name, [lab.name for lab in self.labels])
        )

    def in_category(self, category: str) -> tuple[Label, ...]:
        """Labels whose categories include ``category``."""
        return tuple(lab for lab in self.labels if category in lab.categories)

    def primary_categories(self) -> np.ndarray:
        """int32 (num_labels,): index into ``categories`` of each label's primary
        category; -1 for unused numbers (including 0)."""
        out = np.full(self.num_labels, -1, np.int32)
        for lab in self.labels:
            out[lab.number] = self.categories.index(lab.category)
        return out


class Source(Protocol):
    """Random-access data source (see the module docstring)."""

    vocabulary: Vocabulary | None
    class_names: tuple[str, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...
