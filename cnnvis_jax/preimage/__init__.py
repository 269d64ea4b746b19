"""The pre-image engine and its pieces, shared by activation maximization, MFV,
regularized inversion and adversarial search.

* :mod:`~cnnvis_jax.preimage.engine` -- the one optimization loop (lanes, best-so-far,
  non-finite freezing, phases, checkpoints);
* :mod:`~cnnvis_jax.preimage.updates` -- every update rule as an optax transformation;
* :mod:`~cnnvis_jax.preimage.priors` -- TV^β, α-norm, L2, blur, TV denoising;
* :mod:`~cnnvis_jax.preimage.canvas` -- the jitter / zoom canvas and its crops.
"""

from cnnvis_jax.preimage import canvas, engine, priors, updates

__all__ = ["canvas", "engine", "priors", "updates"]
