#!/bin/bash
# Build the ich3d image on a CPU base and check it: `ich3d --help` and one fast test inside.
#
#   docker/build-check.sh            (from the repository root; needs a running Docker engine)
#
# BASE_IMAGE   default local/debian-python:bookworm; when absent it is made with debootstrap
#              (Debian bookworm minbase + python3, pip, ca-certificates; needs root), because
#              a machine without a registry cannot pull one.
# TORCH_WHEEL  a local torch wheel to install instead of PyPI's (default none: pip takes PyPI's torch,
#              the CUDA build with its nvidia-* libraries, ~7 GB image; it runs on CPU as well). A CPU
#              wheel needs a matching CPU torchvision too, which PyPI does not carry.
# CA_BUNDLE    CA bundle for pip inside the build (default /etc/ssl/certs/ca-certificates.crt;
#              needed behind a TLS-intercepting proxy; CA_BUNDLE=none to skip).
# TAG          image tag (default ich3d:cpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE=${BASE_IMAGE:-local/debian-python:bookworm}
TAG=${TAG:-ich3d:cpu-check}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
TORCH_WHEEL=${TORCH_WHEEL:-none}

if ! docker image inspect "${BASE_IMAGE}" >/dev/null 2>&1; then
    [ "${BASE_IMAGE}" = local/debian-python:bookworm ] || { echo "no image ${BASE_IMAGE}" >&2; exit 1; }
    rootfs=$(mktemp -d /var/tmp/ich3d-rootfs.XXXXXX)
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "${rootfs}" http://deb.debian.org/debian
    tar -C "${rootfs}" -c . | docker import - "${BASE_IMAGE}"
    rm -rf "${rootfs}"
fi

rm -rf docker/local && mkdir -p docker/local
args=(--build-arg "BASE_IMAGE=${BASE_IMAGE}" --build-arg ICH3D_EXTRAS=dev)
if [ "${CA_BUNDLE}" != none ] && [ -f "${CA_BUNDLE}" ]; then
    cp "${CA_BUNDLE}" docker/local/ca-bundle.crt
    args+=(--build-arg PIP_CERT=docker/local/ca-bundle.crt)
fi
if [ -n "${TORCH_WHEEL}" ] && [ "${TORCH_WHEEL}" != none ]; then cp "${TORCH_WHEEL}" docker/local/; fi
start=$(date +%s)
docker build -f docker/Dockerfile -t "${TAG}" "${args[@]}" .
rm -rf docker/local
size=$(docker image inspect -f '{{.Size}}' "${TAG}")
echo "built ${TAG} from ${BASE_IMAGE} in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB"

docker run --rm "${TAG}" ich3d --help | head -3
docker run --rm -v "${PWD}/tests:/app/tests:ro" -e CUDA_VISIBLE_DEVICES= "${TAG}" \
    python3 -m pytest -q -p no:cacheprovider tests/test_delong.py tests/test_config.py
echo "docker check: ok"
