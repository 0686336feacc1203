"""Step-time planner: memory, FLOPs, communication, step time and MFU before renting a slice.

  python -m benchmarks.plan --model=gpt3.175B --hardware=v5p-512 --mesh=fsdp=64,tensor=4 \
      --seq_len=2048 --global_batch=1024
  python -m benchmarks.plan --model=gpt3.6.7B --hardware=h100-64 --global_batch=512 --suggest

Per device it prints the parameters, gradients and AdamW state (float32, as train/step.py keeps
them, split as `train/sharding.py` splits them), the activations kept for the backward pass
under each remat choice, the FLOPs (models/accounting.py), the communication of each mesh
axis (train/comm.py's volume model; time over ICI/DCN or NVLink/InfiniBand from
benchmarks/hardware.py), and the predicted step time and MFU. `--suggest` searches meshes and
remat settings (and sequence parallelism, where a tensor axis is) that fit in memory and
prints the fastest.

The time model (benchmarks/PLANNER.md compares it with measurements and published figures):
* compute: executed FLOPs / (peak x --efficiency); full remat executes 4/3 of the model FLOPs;
* data-parallel gradient reductions and FSDP gathers/scatters overlap with compute (XLA's
  latency-hiding scheduler does this on TPU/GPU), so they cost max(0, their time - compute);
* tensor-parallel all-reduces sit between dependent matmuls and are added in full;
* ring algorithms: an all-reduce of S bytes over n devices sends 2 (n-1)/n S per device; a
  reduction over several axes (data+fsdp) runs at the speed of the slowest link among them.
"""

import sys

from absl import app, flags

from benchmarks import hardware
from benchmarks.planner import REMATS, model_config, parse_mesh, plan, report, suggest

_MODEL = flags.DEFINE_string(
  'model', 'gpt3.175B', 'gpt3.<row of Table 2.1>, palm.540B, or dD.LN.HH (d_ff 4D).'
)
_VOCAB = flags.DEFINE_integer('vocab_size', 0, "Vocabulary (0: the named model's; dD.LN.HH: 256).")
_DTYPE = flags.DEFINE_enum('dtype', 'bfloat16', ['bfloat16', 'float32'], 'Compute dtype.')
_HW = flags.DEFINE_string(
  'hardware',
  'v5p-512',
  'v4-N, v5p-N (N TensorCores), v5e-N, v6e-N (N '
  'chips), a100-N, h100-N, h200-N (N GPUs), cpu-2core.',
)
_SLICES = flags.DEFINE_integer(
  'slices', 1, 'TPU slices joined over DCN (the data axis spans them).'
)
_MESH = flags.DEFINE_string('mesh', '', 'e.g. fsdp=64,tensor=4; axes data, fsdp, tensor; -1: rest.')
_SEQ = flags.DEFINE_integer('seq_len', 2048, 'Tokens per sequence.')
_BATCH = flags.DEFINE_integer('global_batch', 1024, 'Sequences per step.')
_REMAT = flags.DEFINE_enum('remat', 'dots', list(REMATS), 'Remat for the step time.')
_EFF = flags.DEFINE_float('efficiency', 1.0, 'Fraction of peak FLOP/s the matmuls reach.')
_SEQUENCE = flags.DEFINE_boolean(
  'sequence_parallel', False, 'Split activations along L over tensor (act_length=tensor).'
)
_SUGGEST = flags.DEFINE_boolean(
  'suggest', False, 'Search mesh, remat and sequence parallelism; print the fastest.'
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    if _SEQ.value < 1 or _BATCH.value < 1 or not 0 < _EFF.value <= 1:
      raise ValueError('seq_len and global_batch must be >= 1, efficiency in (0, 1]')
    hw = hardware.parse(_HW.value, _SLICES.value)
    mesh = None if _SUGGEST.value else parse_mesh(_MESH.value, hw)
    cfg = model_config(_MODEL.value, _SEQ.value, _VOCAB.value, _DTYPE.value)
    if _SUGGEST.value:
      p = suggest(cfg, hw, _SEQ.value, _BATCH.value, _EFF.value)
      if p is None:
        raise ValueError(f'no mesh and remat setting fits {_MODEL.value} on {_HW.value}')
      print(
        'suggested: --mesh='
        + ','.join(f'{k}={v}' for k, v in p.mesh.items() if v > 1)
        + f' --remat={p.remat}'
        + (' --sequence_parallel' if p.sequence else '')
      )
    else:
      args = (_SEQ.value, _BATCH.value, _REMAT.value, _EFF.value, _SEQUENCE.value)
      p = plan(cfg, hw, mesh, *args)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(report(cfg, hw, p, _SEQ.value, _BATCH.value))


if __name__ == '__main__':
  app.run(main)
