#!/usr/bin/env bash
# The GPU table of benchmarks/RESULTS.md in one run on one H100, within BUDGET_S seconds.
#
#   bash benchmarks/fetch_gpu_wheels.sh     # once, where there is network: fills .whl/
#   bash benchmarks/gpu_check.sh            # on the GPU machine (carry .whl/ there)
#   bash benchmarks/gpu_check.sh --list     # the rows and their time limits; runs nothing
#   bash benchmarks/gpu_check.sh --dry_run  # (or CHECK_CPU=1) every row at a tiny shape for
#                                           # one step, on whatever JAX finds (CPU here)
#
# Rows, most informative first; each runs in its own process with its own limit, and the limits
# add up to less than BUDGET_S (tests/test_benchmarks.py checks it), so none is skipped unless
# one before it overran. GPT-3 Medium, T 2048, B 8, bf16, vocab 50304, scan_layers, 10 timed steps:
#   1. ours at the default (attention 'auto': cuDNN on a GPU; remat=dots)
#   2. ours with remat=none
#   3. the PyTorch recipe (nanoGPT, this model's biases), in its own process (--torch_only)
#   4. GPT-3 XL at the default
#   5. the compile time of the 24-layer step (scan_layers)
#   6. the deterministic mode's cost (--deterministic, else as row 1)
# Environment: PY (python; default .venv/bin/python if present, else python3), OUT (folder for
# rows.jsonl and logs; default runs/gpu_check/DATE), BUDGET_S (seconds for all rows, setup
# included; default 450, and 7200 for the dry run on a slow CPU).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=${CHECK_CPU:-0}
LIST=0
case "${1:-}" in
  --dry_run) DRY=1 ;;
  --list) LIST=1 ;;
  "") ;;
  *) echo "error: unknown argument ${1}; use --list or --dry_run" >&2; exit 2 ;;
esac
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${OUT:-runs/gpu_check/$(date -u +%Y%m%d-%H%M%S)}
ROWS=$OUT/rows.jsonl
N=0
START=$(date +%s)
# Seconds kept for installing the carried wheels and for the table at the end.
SETUP_S=30

# What the device image lacks: install the carried wheels of the missing distributions only.
setup() {
  "$PY" - <<'PY' > "$OUT/missing_wheels.txt"
import glob, importlib.metadata as md, os, re
for path in sorted(glob.glob('.whl/*.whl')):
  name = re.sub(r'[-_.]+', '-', os.path.basename(path).split('-')[0]).lower()
  try:
    md.version(name)
  except md.PackageNotFoundError:
    print(path)
PY
  if [ -s "$OUT/missing_wheels.txt" ]; then
    echo "installing $(wc -l < "$OUT/missing_wheels.txt") carried wheels from .whl/"
    # shellcheck disable=SC2046
    "$PY" -m pip install --quiet --no-deps --no-index $(cat "$OUT/missing_wheels.txt") \
      || "$PY" -m pip install --quiet --no-deps --no-index --break-system-packages \
           $(cat "$OUT/missing_wheels.txt")
  fi
  if ! "$PY" -c 'import ml_collections, tensorflow_datasets, array_record, tensorboardX' \
       2>"$OUT/setup.log"; then
    echo "gpu_check: $(tail -1 "$OUT/setup.log"); run bash benchmarks/fetch_gpu_wheels.sh" \
         "where there is network and carry .whl/" >&2
    exit 1
  fi
}
if [ "$LIST" = 0 ]; then
  mkdir -p "$OUT"
  touch "$ROWS"
  setup
fi

if [ "$DRY" = 1 ]; then
  MED=d64.L2.H2; XL=d64.L3.H2; DEEP=d64.L4.H2; SEQ=32; B=8; V=512
  TIMED="--steps=1 --warmup=1"; TORCH_FLAGS="--notorch_compile"
  T_MED=900; T_REF=900; T_XL=900; T_COMPILE=900; BUDGET_S=${BUDGET_S:-7200}
  [ "$LIST" = 0 ] && echo "dry run: tiny shapes, 1 step, on $("$PY" -c 'import jax; print(jax.default_backend())')"
else
  MED=gpt3.Medium; XL=gpt3.XL; DEEP=gpt3.Medium; SEQ=2048; B=8; V=50304
  TIMED="--steps=10 --warmup=3"; TORCH_FLAGS=""
  # A row: start, import, compile (7-13 s for these steps on an H100), 13 steps (< 5 s).
  T_MED=65; T_REF=100; T_XL=75; T_COMPILE=40; BUDGET_S=${BUDGET_S:-450}
fi
COMMON="--seq_len=$SEQ --dtype=bfloat16 --scan_layers $TIMED"

row() {  # row TIMEOUT_S LABEL ARGS...: one benchmarks.train_step run, bounded in time
  local limit=$1 label=$2
  shift 2
  if [ "$LIST" = 1 ]; then
    printf '%s\t%s\t%s\n' "$limit" "$label" "$*"
    return
  fi
  local left=$((BUDGET_S - SETUP_S - ($(date +%s) - START)))
  N=$((N + 1))
  local log="$OUT/row$N.log"
  if ((left < 30)); then
    "$PY" -m benchmarks.report failure "$ROWS" --label="$label" --rc=0 \
      --reason="skipped: the time budget (BUDGET_S=$BUDGET_S) was spent" -- "$@"
    echo "== $label: skipped (budget)"
    return
  fi
  ((limit > left)) && limit=$left
  echo "== $label (at most ${limit}s): python -m benchmarks.train_step $*"
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$PY" -m benchmarks.train_step --label="$label" --rows_out="$ROWS" "$@" \
    > "$log" 2>&1
  local rc=$?
  echo "   exit $rc after $(($(date +%s) - t0))s; log $log"
  if ((rc != 0)); then
    "$PY" -m benchmarks.report failure "$ROWS" --label="$label" --rc=$rc --timeout="$limit" \
      --log="$log" -- "$@"
  fi
}

MEDIUM="--shapes=$MED $COMMON --batch=$B --vocab=$V"
row $T_MED "ours, default (auto attention, remat=dots)" $MEDIUM --remat=dots --notorch
row $T_MED "ours, remat=none" $MEDIUM --remat=none --notorch
row $T_REF "PyTorch reference, own process" $MEDIUM --torch_only $TORCH_FLAGS
row $T_XL "GPT-3 XL, default" --shapes=$XL $COMMON --batch=$B --vocab=$V --remat=dots --notorch
row $T_COMPILE "compile only, 24 layers, scan_layers" \
  --shapes=$DEEP --seq_len=$SEQ --dtype=bfloat16 --batch=$B --vocab=$V --remat=dots \
  --compile_only --scan_layers
row $T_MED "ours, default, deterministic" $MEDIUM --remat=dots --deterministic --notorch

if [ "$LIST" = 1 ]; then
  echo "budget $BUDGET_S setup $SETUP_S rows $ROWS"
  exit 0
fi

echo
echo "gpu_check: $(($(date +%s) - START)) s in all; rows in $ROWS"
echo
"$PY" -m benchmarks.report table "$ROWS"
