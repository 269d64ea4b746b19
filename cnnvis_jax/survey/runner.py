"""Run the survey's stages into one folder, resumably, and write the report.

``run_survey(model, source, out)`` runs every stage of :data:`~cnnvis_jax.survey.config.STAGES`
(or those of ``only``) and writes ``out/index.html``. Layout of ``out``::

    survey.json           which model, weights and data set the folder belongs to
    <stage>/record.json   a finished stage (its pictures beside it)
    .<stage>.partial/     a stage being computed (moved into place when finished)
    .checkpoints/         resumable state inside long stages (dissection)
    findings.json/.csv    the survey's claims, each with its measured statistic
    timings.json          seconds per stage of the latest runs
    index.html            the report (rewritten after every stage)

A stage is finished when its ``record.json`` exists and its fingerprint (model,
weights, data set, the stage's settings) matches; a rerun skips it, so an
interrupted survey resumes at the stage it was in (and, for dissection, inside it).
``only`` restricts a run to some stages and ``rerun`` runs them again even when
finished.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnvis_jax.errors import CnnvisError, InputError
from cnnvis_jax.model import Model
from cnnvis_jax.progress import progress_bar
from cnnvis_jax.report.files import write_json
from cnnvis_jax.survey import report
from cnnvis_jax.survey.config import QUICK, STAGES, SurveyConfig
from cnnvis_jax.survey.stages import STAGE_FUNCTIONS, Context, survey_layers


class OutputError(CnnvisError):
    """The output folder cannot be written (full disk, permissions)."""


def weights_digest(model: Model) -> str:
    """16 hex digits identifying the model's parameters."""
    from cnnvis_jax.checkpoint import digest

    return digest(model.params)


def describe_source(source: Any) -> str:
    """A short, stable description of a data set (for the identity of a survey)."""
    root = getattr(source, "root", None)
    if root is not None:
        return f"{type(source).__name__}:{os.fspath(root)}"
    fields = [f"{k}={getattr(source, k)}" for k in ("split", "seed", "image_size", "target")
              if hasattr(source, k)]  # fmt: skip
    return f"{type(source).__name__}({len(source)}{', ' if fields else ''}{', '.join(fields)})"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _check_out(out: Path, identity: dict) -> None:
    """Refuse a folder that is a file, unwritable, or holds another model's survey."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {os.fspath(out)!r} is a file; give a folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise InputError(
            f"cannot write into {os.fspath(out)!r} ({e.strerror}); choose a writable folder."
        ) from None
    old = _read_json(out / "survey.json")
    if old is None:
        return
    for key, what in (("model", "model"), ("weights", "weights"), ("dataset", "data set")):
        if old.get(key) != identity[key]:
            raise InputError(
                f"{os.fspath(out)!r} holds the survey of {what} {old.get(key)!r}, not "
                f"{identity[key]!r}; choose another --out folder or delete that one."
            )


def default_labelled(source: Any) -> Any:
    """``source`` when it carries concept masks (concept set, Broden), else None."""
    return source if getattr(source, "vocabulary", None) is not None else None


def run_survey(
    model: Model,
    source: Any,
    out: str | os.PathLike,
    config: SurveyConfig = QUICK,
    *,
    only: Sequence[str] | None = None,
    rerun: bool = False,
    labelled: Any = "auto",
    run_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Survey ``model`` on ``source`` into ``out`` (see the module docstring).

    Args:
      model: the network (needs at least one spatial layer).
      source: its images; also the concept data when it has a vocabulary.
      out: the survey folder.
      config: stage sizes (:data:`~cnnvis_jax.survey.config.QUICK` or ``FULL``).
      only: the stages to run (default all); the others are kept as they are.
      rerun: run the selected stages even when they are finished (default: a
        finished stage with the same settings is kept, so a rerun resumes).
      labelled: the concept source for dissection (``"auto"``: ``source`` when it
        has concept labels; None: skip dissection with a note).
      run_dir: the model's training run (``cnnvis train``'s folder), when known: its
        history gives the training curves, its snapshots the monitoring stage.
      progress: one overall progress bar plus each stage's own.

    Returns the findings (as written to ``findings.json``).

    Raises:
      InputError: a model without spatial layers, an unknown stage, an output folder
        that is a file, unwritable, or holds another model's survey.
      OutputError: the disk filled or a write failed mid-run (finished stages stay
        valid; rerun to resume).
    """
    out = Path(out)
    layers = survey_layers(model, config.layers)
    if not layers:
        raise InputError(
            f"model {model.name!r} has no spatial layer (every layer is fully connected); "
            "the survey's methods look at convolutional feature maps."
        )
    selected = tuple(STAGES) if only is None else tuple(only)
    unknown = [s for s in selected if s not in STAGES]
    if unknown:
        raise InputError(f"unknown stages {unknown}; choose from {', '.join(STAGES)}.")
    if labelled == "auto":
        labelled = default_labelled(source)
    identity = {
        "model": model.name,
        "weights": weights_digest(model),
        "dataset": describe_source(source),
    }
    _check_out(out, identity)
    survey = {**identity, "mode": config.mode, "layers": list(layers)}
    write_json(out / "survey.json", survey)
    checkpoints = out / ".checkpoints"
    run_dir = None if run_dir is None else Path(run_dir)
    ctx = Context(model, source, labelled, config, layers, run_dir, checkpoints, progress, out)
    todo = []
    for stage in STAGES:
        fingerprint = json.dumps({**identity, **config.stage_settings(stage)}, sort_keys=True)
        record = _read_json(out / stage / "record.json")
        finished = isinstance(record, dict) and record.get("fingerprint") == fingerprint
        if stage in selected and (rerun or not finished):
            todo.append((stage, fingerprint))
    timings = _read_json(out / "timings.json") or {}
    try:
        if not todo:
            return report.write_report(out, survey)
        with progress_bar(len(todo), "survey", enabled=progress, unit="stage") as bar:
            for stage, fingerprint in todo:
                bar.set_description(f"survey: {stage}")
                start = time.perf_counter()
                _run_stage(ctx, out, stage, fingerprint)
                timings[stage] = round(time.perf_counter() - start, 1)
                write_json(out / "timings.json", timings)
                found = report.write_report(out, survey)  # viewable after every stage
                bar.update(1)
        return found
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise OutputError(
                f"writing the survey into {os.fspath(out)!r} failed ({e.strerror}); free "
                "space or fix permissions and rerun: finished stages are kept."
            ) from None
        raise


def _run_stage(ctx: Context, out: Path, stage: str, fingerprint: str) -> None:
    final, partial = out / stage, out / f".{stage}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    record = STAGE_FUNCTIONS[stage](ctx, partial)
    record = {"stage": stage, "fingerprint": fingerprint, **record}
    write_json(partial / "record.json", record)
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
