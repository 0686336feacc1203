#!/usr/bin/env bash
# Issue 10's GPU table in one run, ours and the PyTorch reference, in under 8 minutes on one
# H100; prints the rows for benchmarks/RESULTS.md.
#
#   bash benchmarks/fetch_gpu_wheels.sh     # once, where there is network: fills .whl/
#   bash benchmarks/gpu_check.sh            # on the GPU machine (carry .whl/ there)
#   bash benchmarks/gpu_check.sh --dry_run  # (or CHECK_CPU=1) every row at a tiny shape for
#                                           # one step, on whatever JAX finds (CPU here)
#
# Rows, in order of importance (each run has its own timeout; a row that no longer fits in
# BUDGET_S is reported as skipped, so the whole stays under 8 minutes):
#   GPT-3 Medium, T 2048, B 8, bf16, vocab 50304, scan, remat=dots, default attention,
#   with the PyTorch reference (nanoGPT recipe, this model's biases) timed in the same run;
#   attention_impl=cudnn, remat=dots; GPT-3 XL; the compile time of a 24-layer step with and
#   without scan_layers; deterministic GPU ops; vocab 256 (with the reference); batch 16;
#   remat=none (default and cudnn attention).
# Environment: PY (python; default .venv/bin/python if present, else python3), OUT (folder for
# rows.jsonl and logs; default runs/gpu_check/DATE), BUDGET_S (seconds for all rows; default
# 450, and 7200 for the dry run on a slow CPU).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=${CHECK_CPU:-0}
[ "${1:-}" = --dry_run ] && DRY=1
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${OUT:-runs/gpu_check/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
ROWS=$OUT/rows.jsonl
touch "$ROWS"
N=0
START=$(date +%s)

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
setup

if [ "$DRY" = 1 ]; then
  MED=d64.L2.H2; XL=d64.L3.H2; DEEP=d64.L4.H2; SEQ=32; B=8; B2=16; V=512; VS=256
  TIMED="--steps=1 --warmup=1"; CUDNN=xla; REF="--torch --notorch_compile"
  T_LONG=900; T_ROW=900; T_COMPILE=900; BUDGET_S=${BUDGET_S:-7200}
  echo "dry run: tiny shapes, 1 step; cudnn rows use xla (cuDNN needs a GPU)"
else
  MED=gpt3.Medium; XL=gpt3.XL; DEEP=gpt3.Medium; SEQ=2048; B=8; B2=16; V=50304; VS=256
  TIMED="--steps=10 --warmup=3"; CUDNN=cudnn; REF="--torch"
  T_LONG=200; T_ROW=75; T_COMPILE=60; BUDGET_S=${BUDGET_S:-450}
fi
COMMON="--seq_len=$SEQ --dtype=bfloat16 --scan_layers $TIMED"

row() {  # row TIMEOUT_S LABEL ARGS...: one benchmarks.train_step run, bounded in time
  local limit=$1 label=$2
  shift 2
  local left=$((BUDGET_S - ($(date +%s) - START)))
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

row $T_LONG "default attention, remat=dots (+ PyTorch reference)" \
  --shapes=$MED $COMMON --batch=$B --vocab=$V --remat=dots $REF
row $T_ROW "attention_impl=cudnn, remat=dots" \
  --shapes=$MED $COMMON --batch=$B --vocab=$V --remat=dots --attention_impl=$CUDNN --notorch
row $T_ROW "GPT-3 XL, default attention, remat=dots" \
  --shapes=$XL $COMMON --batch=$B --vocab=$V --remat=dots --notorch
row $T_ROW "compile only, 24 layers, scan_layers" \
  --shapes=$DEEP --seq_len=$SEQ --dtype=bfloat16 --batch=$B --vocab=$V --remat=dots \
  --compile_only --scan_layers
row $T_COMPILE "compile only, 24 layers, unrolled (noscan_layers)" \
  --shapes=$DEEP --seq_len=$SEQ --dtype=bfloat16 --batch=$B --vocab=$V --remat=dots \
  --compile_only --noscan_layers
row $T_ROW "default attention, remat=dots, deterministic" \
  --shapes=$MED $COMMON --batch=$B --vocab=$V --remat=dots --deterministic --notorch
row $T_LONG "default attention, remat=dots, vocab 256 (+ PyTorch reference)" \
  --shapes=$MED $COMMON --batch=$B --vocab=$VS --remat=dots $REF
row $T_ROW "default attention, remat=dots, batch 16" \
  --shapes=$MED $COMMON --batch=$B2 --vocab=$V --remat=dots --notorch
row $T_ROW "attention_impl=cudnn, remat=none" \
  --shapes=$MED $COMMON --batch=$B --vocab=$V --remat=none --attention_impl=$CUDNN --notorch
row $T_ROW "default attention, remat=none" \
  --shapes=$MED $COMMON --batch=$B --vocab=$V --remat=none --notorch

echo
echo "gpu_check: $(($(date +%s) - START)) s in all; rows in $ROWS"
echo
"$PY" -m benchmarks.report table "$ROWS"
