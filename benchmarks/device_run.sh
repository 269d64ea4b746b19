#!/usr/bin/env bash
# GPU figures in one go, under 8 minutes: the features, AM, DeconvNet, inversion,
# dissection and input-pipeline benchmarks on one GPU, and, where PEER_SOURCE names a
# NetDissect-Lite checkout (git dir or folder), dissection against NetDissect-Lite with
# both on the GPU (the peer runs under PEER_PYTHON, default PYTHON, which needs torch); their JSON (and one log per benchmark)
# land in $OUT (default benchmarks/results/gpu), with status.jsonl saying how long each
# took and whether it finished.
#
# Needs JAX with a GPU backend and the package's dependencies importable, and the
# trained default model (nothing downloads there). From a checkout here:
#
#   mkdir -p .device-cache && cp -r ~/.cache/cnnvis_jax/conceptnet-default .device-cache/
#   # then on the GPU machine, carrying .device-cache (32 MB):
#   bash benchmarks/device_run.sh
#
# Each benchmark has its own time limit (together 7.9 minutes with the peer); one that
# runs over is stopped and recorded as such, and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
: > "$OUT/status.jsonl"
export CNNVIS_BENCH_RESULTS="$OUT"
export CNNVIS_CACHE=${CNNVIS_CACHE:-$PWD/.device-cache}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CNNVIS_PROGRESS=0
PY=${PYTHON:-python}  # the interpreter that has JAX

"$PY" - > "$OUT/device.json" <<'PY' || { echo "JAX or the package does not import; see above" >&2; exit 1; }
import json
import jax
import cnnvis_jax  # noqa: F401  (the package and its dependencies import)
print(json.dumps({"backend": jax.default_backend(), "jax": jax.__version__,
                  "devices": [str(d) for d in jax.devices()]}))
PY
grep -q '"backend": "gpu"' "$OUT/device.json" || echo "warning: no GPU backend ($(cat "$OUT/device.json"))" >&2
[ -d "$CNNVIS_CACHE/conceptnet-default" ] || echo "warning: no default model in $CNNVIS_CACHE; AM, DeconvNet and inversion will train it first" >&2

run() {  # run NAME SECONDS MODULE [ARGS...]
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS status
    timeout "$limit" "$PY" -m "$@" > "$OUT/$name.log" 2>&1
    status=$?
    printf '{"bench": "%s", "exit": %d, "timed_out": %s, "seconds": %d}\n' "$name" "$status" \
        "$([ $status -eq 124 ] && echo true || echo false)" $((SECONDS - start)) >> "$OUT/status.jsonl"
}

run features 40 benchmarks.bench_features
run am 70 benchmarks.bench_am
run deconv 40 benchmarks.bench_deconv
run inversion 90 benchmarks.bench_inversion
run dissection 45 benchmarks.bench_dissection --speed-only --images 1024 --rounds 1
run pipeline 100 benchmarks.bench_pipeline --threads 1,4,16 --processes 16
if [ -n "${PEER_SOURCE:-}" ]; then
    peer_gpu=()  # the peer on the GPU exactly when ours is
    grep -q '"backend": "gpu"' "$OUT/device.json" && peer_gpu=(--peer-gpu)
    run dissection_peer 90 benchmarks.bench_dissection_peer --peer-python "${PEER_PYTHON:-$PY}" \
        --source "$PEER_SOURCE" --cases resnet18 --rounds 2 "${peer_gpu[@]}" \
        --work "${TMPDIR:-/tmp}/cnnvis_bench_dissection_peer_gpu" --out "$OUT/dissection_peer.json"
fi
cat "$OUT/status.jsonl"
