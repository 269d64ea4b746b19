"""A random-access view of some images of a source."""

from __future__ import annotations

from typing import Any

import numpy as np


class Subset:
    """``source`` restricted to ``indices`` (``subset[i]`` is ``source[indices[i]]``)."""

    def __init__(self, source: Any, indices):
        self.source = source
        self.indices = np.asarray(indices, np.int64)
        self.vocabulary = getattr(source, "vocabulary", None)
        self.class_names = getattr(source, "class_names", ())

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.source[int(self.indices[int(index)])]
