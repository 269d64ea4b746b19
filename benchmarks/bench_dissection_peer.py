"""``cnnvis dissect`` against NetDissect-Lite on NetDissect-Lite's own workload, in one run.

Both whole processes (imports, model load, features, thresholds, tally, report) on the
same generated Broden-format fixture, the same weights and the same layer, alternating
peer and ours for ``--rounds`` rounds so that both see the same machine state:

* ``resnet18``: ResNet-18 ``layer4``, 160 images at 224 px (112 px segmentations),
  ``write_synthetic_broden(DIR, images=160, image_size=224, seed=0)``;
* ``alexnet``: AlexNet conv5 (NetDissect-Lite's ``features.11``), 150 images at 227 px,
  ``seed=1``.

Weights: ``synthetic_torchvision_weights(name, 0)``. NetDissect-Lite runs through
``benchmarks/peers/netdissect_lite.py`` (its own code, patched only to run on today's
libraries; see ``benchmarks/peers/README.md``) with ``--peer-python`` (an interpreter
with torch). Ours runs ``cnnvis dissect ... --preprocess lite --zero-scalar --quiet``.
Each process's peak RSS is its own ``ru_maxrss`` (read by a small wrapper process).

Writes ``benchmarks/results/dissection_peer.json``: per case and round the seconds and
peak RSS of both, our phases (``timings.json``) and the peer's (its log), and the ratio
ours / peer; the median ratio per case.

    python benchmarks/bench_dissection_peer.py --peer-python /path/to/python-with-torch \\
        --source /path/to/NetDissect-Lite [--rounds 3] [--cases resnet18,alexnet]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "resnet18": {"images": 160, "size": 224, "seed": 0, "layer": "layer4", "peer": "layer4"},
    "alexnet": {"images": 150, "size": 227, "seed": 1, "layer": "conv5", "peer": "features.11"},
}

_TIMED = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(json.dumps({"seconds": time.perf_counter() - start, "returncode": code,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def _timed(command: list[str], env: dict | None = None) -> dict:
    """Whole-process seconds and peak RSS of ``command`` (run in its own wrapper)."""
    out = subprocess.run([sys.executable, "-c", _TIMED, *command], capture_output=True,
                         text=True, env=env, check=True)  # fmt: skip
    record = json.loads(out.stdout.strip().splitlines()[-1])
    if record["returncode"] != 0:
        raise SystemExit(f"failed ({record['returncode']}): {' '.join(command)}")
    return record


def _fixture(work: Path, name: str) -> tuple[Path, Path]:
    from safetensors.numpy import save_file

    from cnnvis_jax.data.synthetic_broden import (
        synthetic_torchvision_weights,
        write_synthetic_broden,
    )

    case = CASES[name]
    broden = work / f"broden_{name}"
    weights = work / f"{name}.safetensors"
    if not (broden / "index.csv").exists():
        write_synthetic_broden(broden, images=case["images"], image_size=case["size"],
                               seed=case["seed"])  # fmt: skip
    if not weights.exists():
        save_file(synthetic_torchvision_weights(name, 0), str(weights))
    return broden, weights


def run_case(name: str, args, work: Path) -> dict:
    case = CASES[name]
    broden, weights = _fixture(work, name)
    cnnvis = [sys.executable, "-m", "cnnvis_jax.cli"]
    rounds = []
    for r in range(args.rounds):
        peer_out, ours_out = work / f"lite_{name}", work / f"ours_{name}"
        shutil.rmtree(peer_out, ignore_errors=True)
        shutil.rmtree(ours_out, ignore_errors=True)
        peer_cmd = [args.peer_python, str(ROOT / "benchmarks/peers/netdissect_lite.py"),
                    "--source", str(args.source), "--broden", str(broden), "--weights",
                    str(weights), "--model", name, "--layer", case["peer"], "--out",
                    str(peer_out), *(["--gpu"] if args.peer_gpu else [])]  # fmt: skip
        peer = json.loads(subprocess.run(peer_cmd, capture_output=True, text=True,
                                         check=True).stdout.strip().splitlines()[-1])  # fmt: skip
        ours = _timed([*cnnvis, "dissect", "--model", name, "--weights", str(weights),
                       "--dataset", f"broden:{broden}", "--layers", case["layer"],
                       "--preprocess", "lite", "--zero-scalar", "--quiet", "--out",
                       str(ours_out)])  # fmt: skip
        ours["phases"] = json.loads((ours_out / "timings.json").read_text())["seconds"]
        row = {
            "round": r + 1,
            "peer_seconds": peer["seconds"],
            "peer_peak_rss_mb": peer["peak_rss_mb"],
            "peer_phases": peer.get("phases"),
            "ours_seconds": ours["seconds"],
            "ours_peak_rss_mb": ours["peak_rss_mb"],
            "ours_phases": ours["phases"],
            "ratio": ours["seconds"] / peer["seconds"],
        }
        print(json.dumps({"case": name, **row}), flush=True)
        rounds.append(row)
    return {"rounds": rounds, "median_ratio": statistics.median(r["ratio"] for r in rounds)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer-python", required=True, help="an interpreter with torch")
    ap.add_argument("--source", type=Path, required=True, help="NetDissect-Lite git dir")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default="resnet18,alexnet")
    ap.add_argument("--peer-gpu", action="store_true", help="run NetDissect-Lite with GPU=True")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cnnvis_bench_dissection_peer"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/dissection_peer.json")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    import jax

    record = {
        "machine": {"cpus": os.cpu_count(), "platform": sys.platform,
                    "backend": jax.default_backend(), "peer_gpu": args.peer_gpu},
        "cases": {},
    }  # fmt: skip
    for name in args.cases.split(","):
        record["cases"][name] = run_case(name, args, args.work)
    from cnnvis_jax.report.files import write_json

    write_json(args.out, record)
    for name, case in record["cases"].items():
        print(f"{name}: median ours/peer {case['median_ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
