"""The survey on one network, in one call and one report (``cnnvis survey``).

:func:`run_survey` runs the stages of :data:`STAGES` (the network and its data,
activation maximization, DeconvNet, network inversion, network dissection with
Net2Vec, design diagnosis) into one folder, resumably, and writes ``index.html`` with
the findings table: the survey's claims, each with the statistic measured here.
"""

from cnnvis_jax.survey.config import FULL, QUICK, STAGES, SurveyConfig, parse_only
from cnnvis_jax.survey.findings import findings
from cnnvis_jax.survey.runner import OutputError, run_survey

__all__ = [
    "FULL",
    "QUICK",
    "STAGES",
    "OutputError",
    "SurveyConfig",
    "findings",
    "parse_only",
    "run_survey",
]
