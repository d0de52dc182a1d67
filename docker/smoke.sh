#!/usr/bin/env bash
# Start the compose `api` service from the built resdet:cpu image, wait until /readyz answers 200,
# POST bus.jpg to /detect, print the answer and /models, then stop the stack. `make docker` runs it.
#   CONTAINER=docker COMPOSE="docker compose" bash docker/smoke.sh      (Docker instead of podman)
set -euo pipefail
cd "$(dirname "$0")/.."
CONTAINER=${CONTAINER:-podman}
COMPOSE=${COMPOSE:-podman-compose}
PORT=${PORT:-8000}
IMAGE_FILE=${IMAGE_FILE:-../shared/data/demo-images/bus.jpg}
URL="http://127.0.0.1:${PORT}"

stop() {
    $COMPOSE down >/dev/null 2>&1 || true
    # podman-compose 1.0.3 leaves the project network behind
    [[ $CONTAINER == podman ]] && podman network rm -f "$(basename "$PWD")_default" >/dev/null 2>&1 || true
}
trap stop EXIT

$COMPOSE up -d api
container=$($CONTAINER ps --filter label=com.docker.compose.service=api --format '{{.Names}}' | head -1)
echo "container: $container"
for _ in $(seq 1 300); do
    if curl -fsS "$URL/readyz" >/dev/null 2>&1; then break; fi
    if [[ -z $($CONTAINER ps -q --filter "name=$container") ]]; then
        echo "container exited:"; $CONTAINER logs "$container" | tail -20; exit 1
    fi
    sleep 1
done
echo "+ curl $URL/readyz"; curl -fsS "$URL/readyz"; echo
if [[ $CONTAINER == podman ]]; then
    echo "+ podman healthcheck run $container"
    podman healthcheck run "$container" && echo healthy
fi
echo "+ curl -F file=@$IMAGE_FILE $URL/detect"
curl -fsS -F "file=@$IMAGE_FILE" "$URL/detect"; echo
echo "+ curl -F file=@$IMAGE_FILE $URL/classify?top_k=3"
curl -fsS -F "file=@$IMAGE_FILE" "$URL/classify?top_k=3"; echo
echo "+ curl $URL/models"
curl -fsS "$URL/models" | head -c 1500; echo
