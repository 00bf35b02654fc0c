#!/usr/bin/env bash
# Builds the CPU variant of docker/Dockerfile where no image registry is
# reachable, and checks it: a Debian bookworm base made here by debootstrap,
# the image built by buildah (chroot isolation), then inside it the demo
# (--quick) and the fast test tier. Run as root from a clone of the repo:
#
#   bash docker/check_cpu_image.sh     # 20-40 minutes; logs in work_dirs/docker_check/
#
# The mmcv wheel comes from (or goes to) MMMOD_CACHE (default
# ~/.cache/mmmod, as tools/install.sh), mounted into the build.
set -euo pipefail
cd "$(dirname "$0")/.."
out=work_dirs/docker_check
mkdir -p "$out"
base=localhost/debian:bookworm
image=localhost/mmmod:cpu

if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get install -y buildah debootstrap
fi

if [ -z "$(buildah images -q "$base" 2>/dev/null)" ]; then
  # the Debian mirror apt uses here
  mirror="$(apt-get indextargets --format '$(REPO_URI)' 2>/dev/null \
    | grep -m1 -E '/debian/?$' || true)"
  rootfs="$(mktemp -d)"
  debootstrap --variant=minbase bookworm "$rootfs" \
    "${mirror:-http://deb.debian.org/debian}" > "$out/debootstrap.log"
  c="$(buildah from scratch)"
  tar -C "$rootfs" -c . | tar -C "$(buildah mount "$c")" -x
  buildah umount "$c" >/dev/null
  buildah commit --rm "$c" "$base" >/dev/null
  rm -rf "$rootfs"
fi

args=(--isolation chroot --layers -f docker/Dockerfile -t "$image"
      --ignorefile docker/Dockerfile.dockerignore
      --build-arg BASE="$base" --build-arg FORCE_CUDA=0)
# the CA bundle pip uses here (PIP_CERT, or pip's configuration), if any
cert="${PIP_CERT:-$(python3 -m pip config list 2>/dev/null \
  | sed -n "s/^[^=]*\.cert='\(.*\)'$/\1/p" | head -n1)}"
if [ -n "$cert" ]; then
  args+=(-v "$cert:/host-ca.crt:ro" --build-arg PIP_CERT=/host-ca.crt)
fi
cache="${MMMOD_CACHE:-$HOME/.cache/mmmod}"
mkdir -p "$cache"
args+=(-v "$cache:/host-cache" --build-arg MMMOD_CACHE=/host-cache)
buildah bud "${args[@]}" . 2>&1 | tee "$out/build.log"

c="$(buildah from "$image")"
trap 'buildah rm "$c" >/dev/null' EXIT
buildah run --isolation chroot "$c" -- bash -c '
  cd /mmmod
  python tools/demo.py --quick --work-dir /tmp/demo
  python -m pytest -q -p no:cacheprovider -m "not e2e and not slow" tests
' 2>&1 | tee "$out/run.log"
echo "[check_cpu_image] the image $image built, and the demo and the fast tier ran in it: $out"
