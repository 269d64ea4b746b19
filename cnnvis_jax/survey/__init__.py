"""The survey on one network, in one call and one report (``cnnvis survey``).

:func:`run_survey` runs the stages of :data:`STAGES` (the network and its data,
activation maximization, DeconvNet, network inversion, learned decoders, network
dissection with Net2Vec, training monitoring, design diagnosis, the training-conditions
study, adversarial examples) into one folder, resumably, and writes ``index.html`` with
the findings table: the survey's claims, each with the statistic measured here.

Names are imported on first use, so the command line reads :data:`STAGES` without
loading JAX.
"""

from __future__ import annotations

from cnnvis_jax._lazy import lazy_getattr

_LAZY = {
    "FULL": "cnnvis_jax.survey.config",
    "QUICK": "cnnvis_jax.survey.config",
    "STAGES": "cnnvis_jax.survey.config",
    "SurveyConfig": "cnnvis_jax.survey.config",
    "parse_only": "cnnvis_jax.survey.config",
    "findings": "cnnvis_jax.survey.findings",
    "OutputError": "cnnvis_jax.survey.runner",
    "run_survey": "cnnvis_jax.survey.runner",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = sorted(_LAZY)
