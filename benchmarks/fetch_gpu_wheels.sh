#!/usr/bin/env bash
# Downloads, into .whl/, the pinned wheels that the GPU machine's image lacks, for
# benchmarks/gpu_check.sh to install offline (that machine reaches no package index).
#
#   bash benchmarks/fetch_gpu_wheels.sh      # here, with network; then carry .whl/ along
#
# The image has Python 3.12, jax (CUDA), flax, optax, orbax, torch and sentencepiece, but not
# ml_collections, tensorflow-datasets, array_record or tensorboardX. Besides those four, the
# list holds what they import at import time and the image may lack (measured here with a
# sys.modules diff of each import). gpu_check.sh installs only the ones that are missing
# there, so nothing the image already has is replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=.whl
mkdir -p "$DEST"

# Same versions as requirements.txt / this venv.
PURE=(
  ml_collections==1.1.0
  tensorflow-datasets==4.9.10
  tensorboardX==2.6.4
  immutabledict==4.3.1
  tensorflow-metadata==1.21.0
  googleapis-common-protos==1.76.0
  toml==0.10.2
  tqdm==4.70.1
  six==1.17.0
  termcolor==3.3.0
)
BINARY=(array_record==0.8.6 wrapt==2.5.2)  # compiled: the cp312 manylinux x86_64 wheel
SDIST_ONLY=(promise==2.3)  # no wheel on PyPI: built here (pure Python, so py3-none-any)

TAGS=(--python-version 3.12 --implementation cp --abi cp312
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux_2_28_x86_64 --platform any)
"$PY" -m pip download --quiet --no-deps --only-binary=:all: "${TAGS[@]}" -d "$DEST" \
  "${PURE[@]}" "${BINARY[@]}"
"$PY" -m pip wheel --quiet --no-deps -w "$DEST" "${SDIST_ONLY[@]}"
ls -1 "$DEST"/*.whl
du -sh "$DEST"
