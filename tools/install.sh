#!/usr/bin/env bash
# Installs the pinned OpenMMLab stack and mmmod into the active Python environment.
#
#   bash tools/install.sh            # CPU machine (mmcv's CPU ops)
#   FORCE_CUDA=1 bash tools/install.sh   # build mmcv's CUDA ops too (docker/Dockerfile)
#   MMMOD_VERSIONS=requirements/versions-oldest.sh bash tools/install.sh   # the oldest
#                                                   # supported stack (torch 2.1)
#
# mmcv 2.1 (the newest that mmdet 3.3 / mmseg 1.2 accept) ships on PyPI as source only.
# Its setup.py hard-codes -std=c++17, but torch >= 2.14 headers need C++20, so we build
# it from the unpacked sdist with the standard that the installed torch needs, and cache
# the wheel: a second install takes seconds instead of 10-15 minutes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
pip=("$PY" -m pip install --disable-pip-version-check)
# shellcheck source=/dev/null
. "${MMMOD_VERSIONS:-$here/requirements/versions.sh}"
if [ -n "${NUMPY_SPEC:-}" ]; then  # held for every step (torch < 2.3: numpy 1)
  constraints="$(mktemp)"
  echo "$NUMPY_SPEC" > "$constraints"
  pip+=(-c "$constraints")
fi
cache="${MMMOD_CACHE:-$HOME/.cache/mmmod}"

say() { printf '\n[mmmod install] %s\n' "$*"; }

say "python: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
say "1/5 torch ${TORCH_VERSION}, torchvision ${TORCHVISION_VERSION}"
"${pip[@]}" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

say "2/5 build tools and mmengine ${MMENGINE_VERSION}"
# mmcv 2.1 predates OpenCV 5; setuptools<70 still builds its setup.py.
"${pip[@]}" "setuptools<70" wheel ninja "opencv-python<5" "mmengine==${MMENGINE_VERSION}"

say "3/5 mmcv ${MMCV_VERSION} with compiled ops"
tag="$("$PY" - <<PY
import sys, torch
cuda = 'cu' + torch.version.cuda.replace('.', '') if (torch.version.cuda and '${FORCE_CUDA:-0}' == '1') else 'cpu'
print(f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__.split('+')[0]}-{cuda}")
PY
)"
wheel_dir="$cache/mmcv-${MMCV_VERSION}-$tag"
if ls "$wheel_dir"/mmcv-*.whl >/dev/null 2>&1; then
  say "using cached mmcv wheel in $wheel_dir"
else
  say "no cached wheel for $tag: building mmcv from source (10-15 minutes on 2 cores)"
  build="$(mktemp -d)"
  "$PY" -m pip download --disable-pip-version-check --no-deps --no-binary :all: \
    "mmcv==${MMCV_VERSION}" -d "$build"
  tar -xzf "$build"/mmcv-*.tar.gz -C "$build"
  src="$(echo "$build"/mmcv-"${MMCV_VERSION}")"
  std="$("$PY" -c 'import torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); print("c++20" if v >= (2, 14) else "c++17")')"
  say "compiling with -std=$std for torch $("$PY" -c 'import torch; print(torch.__version__)')"
  sed -i "s/-std=c++17/-std=$std/g" "$src/setup.py"
  mkdir -p "$wheel_dir"
  # -g0: no debug info (the interpreter's CFLAGS ask for -g): 13 instead of
  # 20-28 minutes on a 2-core AMD EPYC, a 1.4 MB wheel instead of 31 MB
  (cd "$src" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" CFLAGS="${CFLAGS:-} -g0" \
    "$PY" -m pip wheel --disable-pip-version-check --no-build-isolation --no-deps . -w "$wheel_dir.tmp")
  mv "$wheel_dir.tmp"/mmcv-*.whl "$wheel_dir"/ && rm -rf "$wheel_dir.tmp" "$build"
fi
"${pip[@]}" --no-deps --force-reinstall "$wheel_dir"/mmcv-*.whl
"${pip[@]}" addict packaging Pillow pyyaml yapf

say "4/5 mmpretrain ${MMPRETRAIN_VERSION}, mmsegmentation ${MMSEG_VERSION}, mmdet ${MMDET_VERSION}"
"${pip[@]}" "mmpretrain==${MMPRETRAIN_VERSION}" "mmsegmentation==${MMSEG_VERSION}" \
  "mmdet==${MMDET_VERSION}" -r "$here/requirements/runtime.txt"

say "5/5 mmmod (editable) and test tools"
"${pip[@]}" --no-build-isolation --no-deps -e "$here"
"${pip[@]}" -r "$here/requirements/tests.txt"

"$PY" - <<'PY'
import mmcv, mmcv.ops, mmdet, mmengine, mmpretrain, mmseg, torch, mmmod
print(f"[mmmod install] done: torch {torch.__version__}, mmengine {mmengine.__version__}, "
      f"mmcv {mmcv.__version__} (ops), mmpretrain {mmpretrain.__version__}, "
      f"mmseg {mmseg.__version__}, mmdet {mmdet.__version__}, mmmod {mmmod.__version__}")
PY
