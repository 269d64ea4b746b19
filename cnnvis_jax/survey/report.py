"""The survey's report: ``index.html`` from the stage records, and the findings
(``findings.json``, ``findings.csv``) beside it. Every piece of text is escaped."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from cnnvis_jax.report.files import write_json, write_text
from cnnvis_jax.report.html import esc, figure, page, table
from cnnvis_jax.survey.config import STAGES
from cnnvis_jax.survey.findings import findings


def read_records(out: Path) -> dict[str, dict]:
    """{stage: record} of the finished stages in ``out`` (survey order)."""
    records = {}
    for stage in STAGES:
        try:
            records[stage] = json.loads((out / stage / "record.json").read_text())
        except (OSError, ValueError):
            continue
    return records


def _section(stage: str, record: dict) -> str:
    parts = [f'<h2 id="{esc(stage)}">{esc(record["title"])}</h2>',
             f'<p class="caption">{esc(record["caption"])}</p>']  # fmt: skip
    for src, caption in record["figures"]:
        parts.append(figure(f"{stage}/{src}", caption))
    for t in record["tables"]:
        parts.append(f"<h3>{esc(t['title'])}</h3>" + table(t["header"], t["rows"]))
    for note in record["notes"]:
        parts.append(f'<p class="note">{esc(note)}</p>')
    if stage == "dissection" and record["figures"]:
        links = [f'<a href="dissection/dissection/{esc(layer)}/index.html">{esc(layer)}</a>'
                 for layer in record["data"].get("layers", {})]  # fmt: skip
        if "net2vec" in record["data"]:
            links.append('<a href="dissection/net2vec/index.html">Net2Vec</a>')
        parts.append("<p>Per-unit tables: " + " · ".join(links) + "</p>")
    return "".join(parts)


def write_report(out: Path, survey: dict) -> dict:
    """Write ``index.html``, ``findings.json`` and ``findings.csv`` for the survey
    described by ``survey`` (what ``survey.json`` holds: model, weights, dataset,
    mode, layers); return the findings."""
    records = read_records(out)
    found = findings(records)
    write_json(out / "findings.json", found)
    rows = [[f["claim"], "yes" if f["held"] else "no", f["statistic"]] for f in found]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["claim", "held", "statistic"])
    writer.writerows(rows)
    write_text(out / "findings.csv", buffer.getvalue())
    head = (
        f"<p>Model <b>{esc(survey['model'])}</b> (weights {esc(survey['weights'])}) on "
        f"{esc(survey['dataset'])}; {esc(survey['mode'])} settings; layers "
        f"{esc(', '.join(survey['layers']))}.</p>"
    )
    nav = " · ".join(f'<a href="#{esc(s)}">{esc(r["title"])}</a>' for s, r in records.items())
    body = [head, f"<p>{nav}</p>", '<h2 id="findings">Findings</h2>',
            "<p class='caption'>The survey's claims on this network; each statistic is read "
            "from the stage records (findings.json names where).</p>",
            table(["claim", "held here", "measured"], rows)]  # fmt: skip
    for stage, record in records.items():
        body.append(_section(stage, record))
    missing = [s for s in STAGES if s not in records]
    if missing:
        body.append(
            f"<p class='note'>Stages not run yet: {esc(', '.join(missing))} "
            f"(cnnvis survey ... --only {esc(','.join(missing))}).</p>"
        )
    write_text(out / "index.html", page(f"Survey: {survey['model']}", "".join(body)))
    return {"findings": found, "stages": list(records)}
