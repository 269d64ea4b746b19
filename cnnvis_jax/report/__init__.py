"""Pictures and pages: image grids (:mod:`~cnnvis_jax.report.grid`), escaped HTML
building blocks (:mod:`~cnnvis_jax.report.html`) and the training report
(:mod:`~cnnvis_jax.report.training`)."""

from cnnvis_jax.report.grid import image_grid, label_colors, rescale_each, save_png, to_uint8
from cnnvis_jax.report.html import esc, figure, page, table

__all__ = [
    "esc",
    "figure",
    "image_grid",
    "label_colors",
    "page",
    "rescale_each",
    "save_png",
    "table",
    "to_uint8",
]
