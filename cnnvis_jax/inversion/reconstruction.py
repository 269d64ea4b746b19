"""What an inversion produced, with its errors: :class:`Reconstruction` and its files.

Both methods (regularized, UpconvNet) end in reconstructions of ``N`` images from
one layer's (possibly perturbed) features; :func:`reconstruction` measures them the
same way, against the *unperturbed* features and images:

* feature error ``‖Φ(clip(x*)) − Φ(x0)‖² / ‖Φ(x0)‖²`` per image;
* image error ``‖clip(x*) − x0‖² / ‖x0‖²`` per image;

and :meth:`Reconstruction.save` writes ``reconstruction_XXX.png`` per image,
``reconstructions.png`` (originals over reconstructions) and ``results.json``
(the two errors' means over the images with finite results, per-image rows, the
images that hit non-finite values).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Reconstruction", "reconstruction"]


@dataclasses.dataclass(frozen=True)
class Reconstruction:
    """Reconstructions of ``N`` images from the features of one layer.

    Attributes:
      layer, method (``regularized`` / ``upconv``), perturbation (``none`` or its name),
      preset and steps (regularized only).
      originals: float32 (N, H, W, 3) the images, in [0, 1].
      images: float32 (N, H, W, 3) the reconstructions clipped to [0, 1].
      feature_error, image_error: float64 (N,) normalized errors (module docstring).
      finite: bool (N,) False where the optimization hit non-finite values.
      names: where each image came from (file or data-set index).
    """

    layer: str
    method: str
    perturbation: str
    originals: np.ndarray
    images: np.ndarray
    feature_error: np.ndarray
    image_error: np.ndarray
    finite: np.ndarray
    names: tuple
    preset: str | None = None
    steps: int | None = None

    @property
    def ok(self) -> np.ndarray:
        """bool (N,): a finite optimization and a finite feature error."""
        return self.finite & np.isfinite(self.feature_error)

    def summary(self) -> dict[str, Any]:
        """The settings, the mean errors over :attr:`ok` images (None when none is)
        and the indices of the images that hit non-finite values."""
        ok = self.ok
        return {
            "layer": self.layer,
            "method": self.method,
            "perturbation": self.perturbation,
            "preset": self.preset,
            **({"steps": self.steps} if self.steps is not None else {}),
            "normalized_feature_error": float(np.mean(self.feature_error[ok]))
            if ok.any()
            else None,
            "normalized_image_error": float(np.mean(self.image_error[ok])) if ok.any() else None,
            "non_finite": [int(i) for i in np.flatnonzero(~self.finite)],
        }

    def record(self) -> dict[str, Any]:
        """The content of ``results.json``: :meth:`summary` and one row per image
        (its errors, whether it stayed finite, its PNG's name)."""
        rows = [
            {
                "index": i,
                "source": name,
                "normalized_feature_error": float(self.feature_error[i]),
                "normalized_image_error": float(self.image_error[i]),
                "finite": bool(self.finite[i]),
                "file": f"reconstruction_{i:03d}.png",
            }
            for i, name in enumerate(self.names)
        ]
        return {**self.summary(), "images": rows}

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the PNGs and ``results.json`` (:meth:`record`; non-finite numbers as
        null) into ``out_dir``; returns the folder."""
        from cnnvis_jax.report.files import write_json
        from cnnvis_jax.report.grid import image_grid, save_png

        out = Path(out_dir)
        record = self.record()
        for image, row in zip(self.images, record["images"]):
            save_png(image, out / row["file"])
        grid = image_grid(np.concatenate([self.originals, self.images]),
                          ncols=len(self.images), scale=2)  # fmt: skip
        save_png(grid, out / "reconstructions.png")
        write_json(out / "results.json", record)
        return out


def reconstruction(model, layer: str, originals, estimates, *, method: str,
                   perturbation: str | None = None, finite=None, names=None,
                   preset: str | None = None, steps: int | None = None) -> Reconstruction:  # fmt: skip
    """Measure ``estimates`` (N, H, W, 3) of ``originals`` (N, H, W, 3, in [0, 1])
    from ``layer`` (see the module docstring)."""
    from cnnvis_jax.inversion.metrics import normalized_error, normalized_image_error
    from cnnvis_jax.inversion.regularized import features_of

    name = model.resolve(layer)
    originals = np.asarray(originals, np.float32)
    shown = np.clip(np.asarray(estimates, np.float32), 0.0, 1.0)
    reference = features_of(model, originals, (name,))[name]
    feature_error = normalized_error(features_of(model, shown, (name,))[name], reference)
    n = len(originals)
    return Reconstruction(
        layer=name,
        method=method,
        perturbation=perturbation or "none",
        originals=originals,
        images=shown,
        feature_error=feature_error,
        image_error=normalized_image_error(shown, originals),
        finite=np.ones(n, bool) if finite is None else np.asarray(finite, bool),
        names=tuple(range(n)) if names is None else tuple(names),
        preset=preset,
        steps=steps,
    )
