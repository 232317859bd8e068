#!/usr/bin/env bash
# A private Docker engine and the real image, for CI and for local image tests.
#
# Sourced (`. docker/ci-engine.sh`): installs Debian's docker.io, debootstrap and
# docker-compose if missing, starts a daemon of its own without touching the host
# network, makes a Debian base image with Python 3.11 (no registry can be reached
# here), builds the image from the real Dockerfile, and exports DOCKER_HOST and
# AURORA_BOOTSTRAP_IMAGE for the tests. The caller stops the daemon with
# `stop_private_engine` (CI traps it on exit).
set -euo pipefail

ENGINE_ROOT=${ENGINE_ROOT:-/var/lib/aurora-bootstrap-engine}
ENGINE_RUN=/var/run/aurora-bootstrap-engine
BASE_IMAGE=local/bookworm-python:12

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v docker-compose >/dev/null || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

mkdir -p "$ENGINE_ROOT" "$ENGINE_RUN"
dockerd --iptables=false --ip-forward=false --bridge=none --storage-driver=overlay2 \
    --data-root="$ENGINE_ROOT/data" --exec-root="$ENGINE_RUN/exec" \
    --pidfile="$ENGINE_RUN/dockerd.pid" -H "unix://$ENGINE_RUN/docker.sock" \
    >"$ENGINE_ROOT/dockerd.log" 2>&1 &
ENGINE_PID=$!
export DOCKER_HOST="unix://$ENGINE_RUN/docker.sock"

stop_private_engine() {
    kill "$ENGINE_PID" 2>/dev/null && wait "$ENGINE_PID" 2>/dev/null || true
}

for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
done
docker info >/dev/null 2>&1 || { tail -20 "$ENGINE_ROOT/dockerd.log"; exit 1; }

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror" \
        >"$ENGINE_ROOT/debootstrap.log" 2>&1
    rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* \
        "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/*
    tar --numeric-owner -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
fi

# The db stand-in for the compose stack (the official postgres image cannot be pulled):
# Debian's PostgreSQL 15 on its own debootstrap base, and the entrypoint of
# docker/db-standin.
DB_BASE_IMAGE=local/bookworm-postgres:15
if ! docker image inspect "$DB_BASE_IMAGE" >/dev/null 2>&1; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=postgresql-15,postgresql-client-15 bookworm \
        "$rootfs" "$mirror" >"$ENGINE_ROOT/debootstrap-postgres.log" 2>&1
    rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* \
        "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/lib/postgresql/15
    tar --numeric-owner -C "$rootfs" -c . | docker import - "$DB_BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
fi
docker build --network=none --build-arg BASE_IMAGE="$DB_BASE_IMAGE" \
    -t local/postgres-standin:15 docker/db-standin >/dev/null
export AURORA_BOOTSTRAP_DB_STANDIN=local/postgres-standin:15

make image BASE_IMAGE="$BASE_IMAGE" IMAGE=aurora-bootstrap:local
export AURORA_BOOTSTRAP_IMAGE=aurora-bootstrap:local
export AURORA_BOOTSTRAP_BASE_IMAGE="$BASE_IMAGE"
