#!/usr/bin/env bash
# The container smoke stage of .ci/run and `make docker`: build the compose image, `up`, wait for /readyz, POST
# bus.jpg to /detect (multipart and raw body) and /classify, hold the detections to `python -m detection.predict`
# on the same file and checkpoint, check /metrics and /, `down`; fail on any step; then remove what it made
# (containers, network, image, dangling build layers: a registry build leaves its 5.4 GB image in podman's storage).
# The build prints the free disk under the engine's storage before it and at its fullest, and warns when less than
# BUILD_DISK_GB (default 13) is free: a registry build's peak, measured, is 12.4 GB (docs/DEPLOYMENT.md, "Disk").
#   bash docker/smoke.sh            the whole stage
#   bash docker/smoke.sh build      build and label only (`make docker-build`); keeps the image
# COMPOSE: the compose command (default `docker compose`: podman-compose through container-kit's shim, or Docker's;
# podman-compose where there is no docker CLI).
# CONTAINER: podman or docker (default: podman where installed). SMOKE_PORT: host port (default 18000, clear of
# a `make serve` on 8000). KEEP_IMAGE=1 keeps resdet:cpu afterwards. PYTHON runs detection.predict.
# DETECTION_TOLERANCE: largest box (pixels) or score difference between /detect and detection.predict, whose
# count, labels and order must match; default 0: equality (both run detection.predictor.Predictor, with the runtime
# and precision /models reports); `report` prints the differences without failing. EXPECTED_RUNTIME: the runtime
# /models must report for the detector and the classifier (default openvino: the image sets RUNTIME=auto and carries OpenVINO).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
read -r -a COMPOSE <<<"${COMPOSE:-$(command -v docker >/dev/null && echo docker compose || echo podman-compose)}"
CONTAINER=${CONTAINER:-$(command -v podman >/dev/null && echo podman || echo docker)}
PROJECT=resdet-smoke
IMAGE=resdet:cpu  # docker-compose.yml's api image
SMOKE_PORT=${SMOKE_PORT:-18000}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-120}
DETECTION_TOLERANCE=${DETECTION_TOLERANCE:-0}
EXPECTED_RUNTIME=${EXPECTED_RUNTIME:-openvino}  # what auto picks in the image, which carries OpenVINO
BUILD_DISK_GB=${BUILD_DISK_GB:-13}  # a registry build's peak, measured: 12.4 GB (docs/DEPLOYMENT.md, "Disk")
PYTHON=${PYTHON:-.venv/bin/python}
IMAGE_FILE=../shared/data/demo-images/bus.jpg
CHECKPOINT=service/models/demo_detector.safetensors  # what the container serves from the mounted service/models
URL="http://127.0.0.1:${SMOKE_PORT}"
export BUILDAH_FORMAT=docker  # podman's default OCI format drops HEALTHCHECK
export PORT=$SMOKE_PORT       # docker-compose.yml publishes ${PORT:-8000}

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }
compose() { "${COMPOSE[@]}" -p "$PROJECT" "$@"; }

build() {
    step "build: ${COMPOSE[*]} build api"
    # podman-compose 1.0.3 exits 0 when the build fails: take the tag off first, so that only a build that
    # succeeded leaves $IMAGE (the layers stay, and with them the build cache)
    [[ $CONTAINER == podman ]] && podman untag "$IMAGE" 2>/dev/null || true
    # Disk (docs/DEPLOYMENT.md, "Disk"): free space where the engine stores images, before the build and at its
    # fullest, sampled every second until the build ends (or this script does)
    local storage samples="" sampler="" free_gb
    storage=$($CONTAINER info --format "$([[ $CONTAINER == podman ]] && echo '{{.Store.GraphRoot}}' || echo '{{.DockerRootDir}}')" 2>/dev/null) || storage=""
    if [[ -d $storage ]]; then
        samples=$(mktemp)
        (while kill -0 $$ 2>/dev/null && df -B1 --output=avail "$storage" | tail -1 >>"$samples"; do sleep 1; done) &
        sampler=$!
        free_gb=$(df -B1 --output=avail "$storage" | tail -1 | awk '{printf "%.1f", $1 / 1e9}')
        echo "disk: $free_gb GB free under $storage"
        if awk -v free="$free_gb" -v need="$BUILD_DISK_GB" 'BEGIN { exit !(free < need) }'; then
            echo "WARNING: a build from the package registry (CUDA torch) needs about $BUILD_DISK_GB GB free at its peak" >&2
        fi
    fi
    local started=$SECONDS
    compose build api
    $CONTAINER image inspect "$IMAGE" >/dev/null || { echo "FAIL: the build left no $IMAGE" >&2; exit 1; }
    echo "built in $((SECONDS - started)) s"
    if [[ -n $sampler ]]; then
        kill "$sampler" 2>/dev/null || true
        sort -n "$samples" | head -1 | awk -v free="$free_gb" '{printf "disk: %.1f GB free at the fullest, %.1f GB used by the build at its peak\n", $1 / 1e9, free - $1 / 1e9}'
        rm -f "$samples"
    fi
    # Labels are fixed before any RUN: copy the index that docker/install-torch.sh used into one
    local source torch
    source=$($CONTAINER run --rm --network none --entrypoint sed "$IMAGE" -n 's/^source=//p' /opt/venv/torch-source)
    torch=$($CONTAINER run --rm --network none --entrypoint sed "$IMAGE" -n 's/^torch=//p' /opt/venv/torch-source)
    local context
    context=$(mktemp -d)
    printf 'FROM %s\nLABEL org.resdet.torch.source="%s" org.resdet.torch.build="%s"\n' "$IMAGE" "$source" "$torch" \
        >"$context/Dockerfile"
    $CONTAINER build -q -t "$IMAGE" "$context" >/dev/null
    rm -rf "$context"
    $CONTAINER image inspect "$IMAGE" --format \
        'image {{index .Labels "org.resdet.torch.build"}} from {{index .Labels "org.resdet.torch.source"}}, {{.Size}} bytes'
}

if [[ $MODE == build ]]; then
    build
    exit 0
fi
[[ $MODE == all ]] || { echo "usage: bash docker/smoke.sh [build]" >&2; exit 2; }

if [[ ! -f $IMAGE_FILE ]]; then
    echo "SKIP container smoke stage: $IMAGE_FILE is absent (a clone without ../shared)"
    exit 0
fi

work=$(mktemp -d)
cleanup() {
    local status=$?
    step "cleanup"
    compose down >/dev/null 2>&1 || true
    if [[ $CONTAINER == podman ]]; then
        # podman-compose 1.0.3's `down` leaves the project network
        podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
    fi
    if [[ ${KEEP_IMAGE:-0} != 1 ]]; then
        $CONTAINER rmi -f "$IMAGE" >/dev/null 2>&1 || true
        # the build's dangling layers, and only ours (docker/Dockerfile labels every stage)
        $CONTAINER image prune -f --filter label=org.resdet.stage >/dev/null 2>&1 || true
    fi
    [[ $CONTAINER == podman ]] && podman system df
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

build

step "up: ${COMPOSE[*]} up -d (port $SMOKE_PORT)"
compose down >/dev/null 2>&1 || true  # a container left by an interrupted run would block the name
up_at=$SECONDS
compose up -d
container=$($CONTAINER ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}' | head -1)
[[ -n $container ]] || { echo "FAIL: up started no container" >&2; exit 1; }

step "wait for $URL/readyz (at most $READY_TIMEOUT_S s)"
until curl -fsS "$URL/readyz" >/dev/null 2>&1; do
    state=$($CONTAINER inspect --format '{{.State.Status}} {{.RestartCount}}' "$container")
    if [[ $state != "running 0" ]]; then
        echo "FAIL: container $container is '$state' (status, restarts):" >&2
        $CONTAINER logs "$container" 2>&1 | tail -20 >&2
        exit 1
    fi
    if ((SECONDS - up_at > READY_TIMEOUT_S)); then
        echo "FAIL: not ready within $READY_TIMEOUT_S s" >&2
        $CONTAINER logs "$container" 2>&1 | tail -20 >&2
        exit 1
    fi
    sleep 1
done
echo "ready $((SECONDS - up_at)) s after up ($(uptime | sed 's/.*load/load/'))"
if [[ $CONTAINER == podman ]]; then
    podman healthcheck run "$container" # podman without systemd never runs it on its own
    echo "healthcheck: healthy"
fi

step "POST $IMAGE_FILE to /detect (multipart, then raw body) and /classify"
curl -fsS -F "file=@$IMAGE_FILE" "$URL/detect" -o "$work/multipart.json"
echo "first /detect answered $((SECONDS - up_at)) s after up"
curl -fsS --data-binary "@$IMAGE_FILE" -H 'Content-Type: image/jpeg' "$URL/detect" -o "$work/raw.json"
curl -fsS -F "file=@$IMAGE_FILE" "$URL/classify?top_k=3" -o "$work/classify.json"
head -c 600 "$work/multipart.json"
echo
"$PYTHON" -c "import json, sys; top = json.load(open(sys.argv[1]))['predictions']; assert top, 'no classes'; print('classify:', top)" \
    "$work/classify.json"

step "/models: the runtime the image carries runs the detector and the classifier"
# the runtime and precision of each served model (/models): the image sets RUNTIME=auto and carries OpenVINO, which
# auto picks for both; BF16=auto and the CLI's --precision auto pick the precision alike
curl -fsS "$URL/models" -o "$work/models.json"
served() {  # ROLE -> "runtime precision" of the default model of that role
    "$PYTHON" -c "import json, sys; (m,) = [m for m in json.load(open(sys.argv[1]))['models'] if m['role'] == sys.argv[2] and m['default']]; print(m['runtime']['runtime'], m['runtime']['precision']); print(sys.argv[2], m['runtime'], file=sys.stderr)" \
        "$work/models.json" "$1"
}
read -r classifier_runtime _ < <(served classifier)
[[ $classifier_runtime == "$EXPECTED_RUNTIME" ]] ||
    { echo "FAIL: the classifier runs under $classifier_runtime, not $EXPECTED_RUNTIME" >&2; exit 1; }
read -r runtime precision < <(served detector)
[[ $runtime == "$EXPECTED_RUNTIME" ]] || { echo "FAIL: the detector runs under $runtime, not $EXPECTED_RUNTIME" >&2; exit 1; }

step "compare with python -m detection.predict --runtime $runtime --precision $precision on the same file and checkpoint"
"$PYTHON" -m detection.predict "$IMAGE_FILE" --checkpoint "$CHECKPOINT" --output "$work/predict" --device cpu \
    --runtime "$runtime" --precision "$precision" >/dev/null
"$PYTHON" docker/compare_detections.py "$work/multipart.json" "$work/raw.json" "$work/predict/predictions.jsonl" \
    --tolerance "$DETECTION_TOLERANCE"

step "/metrics and /"
curl -fsS "$URL/metrics" | grep '^resdet_http_requests_total{' | grep '"/detect"' | grep -q '"200"' \
    || { echo "FAIL: /metrics counts no answered /detect" >&2; exit 1; }
curl -fsS "$URL/" | grep -qi '<html' || { echo "FAIL: / is not the page" >&2; exit 1; }
echo "ok"

step "down"
compose down
echo "container smoke stage passed in $SECONDS s"
