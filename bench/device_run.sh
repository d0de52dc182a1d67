#!/usr/bin/env bash
# Every GPU check of this wave in one bounded call on a lent GPU machine (torch preinstalled there, no
# registry): the issue-17 fixed paths, the service's contract tests and a short soak on CUDA, the GPU
# suite, bf16 vs fp32 training on coco-mini, and the CIFAR-10 study with whatever time is left.
#
#   bench/device_run.sh OUTDIR [TOTAL_SECONDS]      # default 560 s; each part has its own time limit
#   SMOKE=1 bench/device_run.sh OUTDIR 900          # the same parts in their --smoke modes, on a CPU
#
# Expects, inside the checkout (the device machine sees nothing else): .whl/ (cp312 wheels of fastapi,
# starlette, pydantic(-core, -settings), python-multipart, uvicorn, pycocotools, opentelemetry-api and
# their small dependencies) and .devdata/data/ (demo-images, coco-mini train2017 + annotations,
# cifar10-jpeg.tar.gz), linked as ../shared/data so the scripts find it where the tests do. Everything
# a part writes goes to OUTDIR/<part>/; OUTDIR/results.tar.gz packs it (the machine returns 8 files).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:?usage: bench/device_run.sh OUTDIR [TOTAL_SECONDS]}
TOTAL=${2:-560}
START=$(date +%s)
mkdir -p "$OUTDIR"
LOG="$OUTDIR/device_run.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
[ -e ../shared ] || ln -s "$PWD/.devdata" ../shared

left() { echo $(( TOTAL - ($(date +%s) - START) )); }

part() {  # part NAME SECONDS COMMAND...: run with a limit, log its status and duration
    local name=$1 limit=$2; shift 2
    local remaining; remaining=$(left)
    if [ "$remaining" -lt 20 ]; then echo "== $name: skipped (${remaining} s left)" | tee -a "$LOG"; return; fi
    [ "$limit" -gt "$remaining" ] && limit=$remaining
    mkdir -p "$OUTDIR/$name"
    local t0; t0=$(date +%s)
    echo "== $name (limit ${limit} s): $*" | tee -a "$LOG"
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUTDIR/$name/stdout.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
    tail -n 25 "$OUTDIR/$name/stdout.log" >> "$LOG"
}

{
    date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} >> "$LOG" 2>&1

SMOKE_FLAG=${SMOKE:+--smoke}
PARTS=${PARTS:-gpu_checks service_tests gpu_suite bf16_accuracy cifar}
for name in $PARTS; do
    case $name in
    gpu_checks) part gpu_checks 120 $PY -m bench.gpu_checks "$OUTDIR/gpu_checks" $SMOKE_FLAG ;;
    service_tests)  # the service's contract tests; the settings' DEVICE=auto puts the models on CUDA there
        part service_tests 90 $PY -m pytest -q -p no:cacheprovider tests/test_service_isolation.py \
            tests/test_service_transport.py tests/test_service_detect.py ${SMOKE:+-k request_id} ;;
    gpu_suite) part gpu_suite 160 $PY -m bench.gpu_suite --out "$OUTDIR/gpu_suite" $SMOKE_FLAG ;;
    bf16_accuracy)
        device=cuda; [ -n "${SMOKE:-}" ] && device=cpu
        part bf16_accuracy 150 $PY -m bench.bf16_accuracy --device "$device" --parts train \
            --iterations "${ACC_ITERATIONS:-1200}" --out "$OUTDIR/bf16_accuracy" $SMOKE_FLAG ;;
    cifar)
        budget=$(( $(left) - 25 ))
        if [ "$budget" -gt 60 ]; then
            part cifar $(( budget + 20 )) bench/cifar_paper.sh "$OUTDIR/cifar" --budget "$budget" $SMOKE_FLAG \
                ${SMOKE:+--data "${CIFAR_SMOKE_DATA:-}"}
        fi ;;
    esac
done

echo "== total $(( $(date +%s) - START )) s" >> "$LOG"
find "$OUTDIR" -name '*.pt' -delete
tar -C "$OUTDIR" -czf "$OUTDIR.tar.gz" --exclude='*.safetensors' --exclude='*.jpg' --exclude=tensorboard --exclude=data_cache . && mv "$OUTDIR.tar.gz" "$OUTDIR/results.tar.gz"
ls -la "$OUTDIR" >> "$LOG"
