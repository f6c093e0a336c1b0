#!/usr/bin/env bash
# Measures submit-to-start latency of Docker's swarm mode for the figures page, as a
# counterpart of the `docker-latency` command: CONTAINERS services (default 20) of
# cube-test/busybox:latest running `sleep 3600`, one at a time after one warm-up service.
#
# Latency is the time from just before `docker service create --detach` until the engine's
# `start` event for the service's container (its TimeNano). It includes the docker CLI's own
# start-up, so the script prints that overhead (`docker version`) beside it.
#
# Swarm mode changes the shared engine, so the script:
# - refuses to run when CI is set or the engine is already part of a swarm;
# - initialises a single-node swarm on 127.0.0.1 only and leaves it on exit (trap);
# - labels every service and container with cube-bench.run=RUN_ID and removes exactly those.
#
# A swarm task always tries to pull its image. So that no remote registry is ever contacted,
# the image is tagged locally as 127.0.0.1:PORT/..., a registry on a closed loopback port,
# where the pull fails at once and the local image is used.
#
# Usage: benches/swarm-compare.sh   (needs the image from scripts/build-test-image)
set -euo pipefail

readonly CONTAINERS="${CONTAINERS:-20}"
readonly SOURCE_IMAGE="cube-test/busybox:latest"
readonly CLOSED_PORT=9
readonly RUN_ID="$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
readonly LABEL="cube-bench.run=${RUN_ID}"
readonly IMAGE="127.0.0.1:${CLOSED_PORT}/cube-bench/busybox:${RUN_ID}"
WORK_DIR="$(mktemp -d)"
readonly WORK_DIR
readonly EVENTS="${WORK_DIR}/events"

fail() {
    echo "swarm-compare: $*" >&2
    exit 1
}

if [[ -n "${CI:-}" ]]; then
    fail "refusing to run with CI set: swarm mode changes the shared Docker Engine"
fi
state="$(docker info --format '{{.Swarm.LocalNodeState}}')" ||
    fail "cannot reach the Docker Engine"
if [[ "${state}" != "inactive" ]]; then
    fail "refusing to run: the engine's swarm state is '${state}', not 'inactive'"
fi
if (exec 3<>"/dev/tcp/127.0.0.1/${CLOSED_PORT}") 2>/dev/null; then
    fail "port ${CLOSED_PORT} on 127.0.0.1 is open, so the image tag would name a live registry"
fi
docker image inspect "${SOURCE_IMAGE}" >/dev/null 2>&1 ||
    fail "image ${SOURCE_IMAGE} is missing; build it with scripts/build-test-image"

swarm_started=""
events_pid=""
cleanup() {
    local services containers
    if [[ -n "${events_pid}" ]]; then
        kill "${events_pid}" 2>/dev/null || true
        wait "${events_pid}" 2>/dev/null || true
    fi
    if [[ -n "${swarm_started}" ]]; then
        services="$(docker service ls --quiet --filter "label=${LABEL}" 2>/dev/null || true)"
        if [[ -n "${services}" ]]; then
            # shellcheck disable=SC2086 # one id per word
            docker service rm ${services} >/dev/null || true
        fi
        docker swarm leave --force >/dev/null || echo "swarm-compare: failed to leave the swarm" >&2
    fi
    containers="$(docker ps --all --quiet --filter "label=${LABEL}" 2>/dev/null || true)"
    if [[ -n "${containers}" ]]; then
        # shellcheck disable=SC2086 # one id per word
        docker rm --force ${containers} >/dev/null || true
    fi
    docker image rm "${IMAGE}" >/dev/null 2>&1 || true
    rm -rf "${WORK_DIR}"
}
trap cleanup EXIT

docker tag "${SOURCE_IMAGE}" "${IMAGE}"
docker swarm init --listen-addr 127.0.0.1 --advertise-addr 127.0.0.1 \
    --data-path-addr 127.0.0.1 >/dev/null
swarm_started=1

docker events --filter type=container --filter event=start --filter "label=${LABEL}" \
    --format '{{index .Actor.Attributes "com.docker.swarm.service.name"}} {{.TimeNano}}' \
    >"${EVENTS}" &
events_pid=$!
sleep 1 # let the event stream attach before the first service

# Prints the nanosecond time of the start event of service $1, waiting up to 60 s.
start_time_of() {
    local deadline=$((SECONDS + 60)) line
    while ((SECONDS < deadline)); do
        line="$(grep -m1 "^$1 " "${EVENTS}" || true)"
        if [[ -n "${line}" ]]; then
            echo "${line#* }"
            return 0
        fi
        sleep 0.01
    done
    return 1
}

latencies=()
for round in $(seq 0 "${CONTAINERS}"); do
    name="cube-bench-${RUN_ID}-${round}"
    submitted="$(date +%s%N)"
    docker service create --detach --quiet --no-resolve-image --name "${name}" \
        --label "${LABEL}" --container-label "${LABEL}" --restart-condition none \
        --limit-cpu 0.1 --limit-memory 64M "${IMAGE}" sleep 3600 >/dev/null
    started="$(start_time_of "${name}")" ||
        fail "service ${name} started no container within 60 s: $(docker service ps --no-trunc "${name}" 2>&1 | tail -n +2)"
    ms=$(((started - submitted) / 1000000))
    if ((round == 0)); then
        continue
    fi
    echo "swarm-compare: round ${round}: ${ms} ms" >&2
    latencies+=("${ms}")
done

cli=()
for _ in 1 2 3 4 5; do
    before="$(date +%s%N)"
    docker version --format '{{.Server.Version}}' >/dev/null
    cli+=($((($(date +%s%N) - before) / 1000000)))
done

# Prints the median and 90th percentile (nearest rank) of the numbers on stdin.
percentiles() {
    sort -n | awk '{ v[NR] = $1 } END {
        m = int((NR * 50 + 99) / 100); p = int((NR * 90 + 99) / 100)
        printf "median %d ms  p90 %d ms  min %d ms  max %d ms\n", v[m], v[p], v[1], v[NR] }'
}

echo "run ${RUN_ID}: ${CONTAINERS} services, one at a time"
echo "swarm (service create -> container start): $(printf '%s\n' "${latencies[@]}" | percentiles)"
echo "docker CLI call alone (docker version):    $(printf '%s\n' "${cli[@]}" | percentiles)"
