#!/usr/bin/env bash
# Build the sentiloop image with podman on a machine that reaches Debian's and
# PyPI's package servers but no image registry (README, "Deployment"):
#   1. a Debian bookworm base (python3 3.11, its venv module, CA certificates) made
#      with debootstrap and imported as localhost/sentiloop-base:bookworm, once;
#   2. the Dockerfile built on it (BASE_IMAGE), with pip seeing what it sees here:
#      the host's network and CA bundle (a TLS-inspecting proxy is then trusted too)
#      and, when present, torch's CPU wheel from a local directory.
# On a machine that pulls images, `podman build -t sentiloop .` (or docker build) is
# all it takes; this script is for the offline case. Run as root (debootstrap
# needs it; podman then uses the kernel's overlay filesystem, no user namespaces).
# Needs the Debian packages podman, runc and debootstrap. `podman run` of the image
# takes the same --runtime and --ulimit flags as below on such a host.
#
# Environment:
#   IMAGE            the tag to build (default localhost/sentiloop:latest)
#   BASE_IMAGE       skip the debootstrap step and build on this image
#   DEBIAN_MIRROR    default http://deb.debian.org/debian
#   TORCH_WHEELS     a directory holding torch-2.13.0+cpu-cp311-*.whl (default
#                    /opt/wheels when it holds one); otherwise pip asks PyTorch's CPU index
#   STORAGE_DRIVER   podman's storage driver: overlay (default), or vfs where the
#                    kernel refuses overlay mounts (slower, a full copy per layer).
#                    A store first used with another driver refuses this one
#                    ("database configuration mismatch"): pass that driver instead.
#   CA_BUNDLE        the CA bundle pip trusts (default /etc/ssl/certs/ca-certificates.crt)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/sentiloop:latest}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
STORAGE_DRIVER=${STORAGE_DRIVER:-overlay}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
# runc, not crun: crun refuses a host whose cgroups are mixed v1 and v2 ("cgroups in
# hybrid mode not supported"). The limits: podman's defaults (open files 1048576)
# are above what a container without CAP_SYS_RESOURCE may set.
podman=(podman --storage-driver "$STORAGE_DRIVER" --cgroup-manager cgroupfs --runtime runc)
limits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=32768:32768)

if [[ -z ${BASE_IMAGE:-} ]]; then
    BASE_IMAGE=localhost/sentiloop-base:bookworm
    if ! "${podman[@]}" image exists "$BASE_IMAGE"; then
        rootfs=$(mktemp -d /tmp/sentiloop-rootfs.XXXXXX)
        trap 'rm -rf "$rootfs"' EXIT
        echo "making $BASE_IMAGE from $DEBIAN_MIRROR (debootstrap: a few minutes)" >&2
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$rootfs" "$DEBIAN_MIRROR"
        # What an image does not need: package lists and caches.
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
            "$rootfs"/var/cache/apt/archives/*.deb
        tar -C "$rootfs" -c . | "${podman[@]}" import \
            --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE"
    fi
fi

build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
volumes=()
if [[ -f $CA_BUNDLE ]]; then
    volumes+=(-v "$CA_BUNDLE:/run/build-ca.crt:ro")
    build_args+=(--build-arg PIP_CERT=/run/build-ca.crt)
fi
for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
    if [[ -n ${!name:-} && ${!name} != *file://* ]]; then
        build_args+=(--build-arg "$name=${!name}")
    fi
done
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
if compgen -G "$TORCH_WHEELS/torch-2.13.0+cpu-cp311-*.whl" >/dev/null; then
    volumes+=(-v "$TORCH_WHEELS:/run/torch-wheels:ro")
    build_args+=(--build-arg "TORCH_PIP_ARGS=--find-links /run/torch-wheels")
fi

# --network host: the build's pip uses the host's network (and its proxy), as pip here.
# --format docker: the OCI format has no HEALTHCHECK (podman drops it with a warning).
"${podman[@]}" build --network host --layers --format docker "${limits[@]}" \
    "${volumes[@]}" "${build_args[@]}" -t "$IMAGE" .
"${podman[@]}" images "$IMAGE"
