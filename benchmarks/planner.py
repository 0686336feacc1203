"""The planner's model: memory, FLOPs, communication, step time and MFU (no flags).

`python -m benchmarks.plan` is its command line; the time model is described there.
"""

import dataclasses
import functools
import itertools
import re

from benchmarks import hardware
from models import shapes
from train import comm

REMATS = shapes.REMATS  # the order of preference: less recomputation first
PARAM_BYTES = 4  # float32 parameters, gradients and both AdamW moments (train/step.py)
HEADROOM = 0.9  # fraction of HBM the plan may fill (XLA's own buffers, fragmentation)


def model_config(name: str, seq_len: int, vocab_size: int = 0, dtype: str = 'bfloat16'):
  """A ModelConfig for a named model (scan_layers on: its shapes, nothing is built)."""
  from models import gpt3

  family, _, row = name.partition('.')
  if family == 'gpt3':
    shape = gpt3.full(row)
  elif name == 'palm.540B':
    # PaLM 540B (Chowdhery et al. 2022, Table 1): 118 layers, d_model 18432, 48 heads x 256,
    # multi-query, vocab 256k, SwiGLU with d_ff 73728 (3 matrices). This model's MLP is GELU
    # with 2 matrices, so d_ff = 1.5 x 73728 gives the same parameters and FLOPs.
    shape = dict(
      vocab_size=256000,
      d_model=18432,
      num_layers=118,
      num_heads=48,
      num_kv_heads=1,
      head_dim=256,
      d_ff=110592,
      max_seq_len=2048,
      pos_emb='rope',
      tie_embeddings=True,
    )
  elif re.fullmatch(r'd\d+\.L\d+\.H\d+', name):
    d, layers, heads = (int(p[1:]) for p in name.split('.'))
    shape = dict(d_model=d, num_layers=layers, num_heads=heads, vocab_size=256, max_seq_len=seq_len)
  else:
    raise ValueError(
      f'unknown model {name!r}; use gpt3.<{"|".join(gpt3.GPT3_TABLE)}>, palm.540B or dD.LN.HH'
    )
  if vocab_size:
    shape['vocab_size'] = vocab_size
  from experiments.configs import default

  m = default.get_config().model
  m.update(shape, dtype=dtype, scan_layers=True)
  m.max_seq_len = max(m.max_seq_len, seq_len)
  return shapes.ModelConfig.from_config(m)


def parse_mesh(text: str, hw: hardware.Slice) -> dict[str, int]:
  from ml_collections import ConfigDict

  pairs = {}
  for item in filter(None, text.split(',')):
    key, eq, value = item.partition('=')
    if not eq or not value.lstrip('-').isdigit():
      raise ValueError(f'bad mesh entry {item!r}; write e.g. fsdp=64,tensor=4')
    pairs[key.strip()] = int(value)
  if not pairs:
    pairs = {'data': -1}
  try:
    sizes = shapes.mesh_shape(ConfigDict(pairs), hw.chips)
  except ValueError as e:
    if hw.chip.chips_per_name_unit != 1:
      raise ValueError(f'{e} ({hw.chip.name}-N counts TensorCores, 2 per chip)') from None
    raise
  return dict(zip(shapes.MESH_AXES, sizes, strict=True))


def _act_bytes(cfg) -> int:
  return 2 if cfg.dtype in ('bfloat16', 'float16') else 4


def activation_bytes(cfg, tokens: int, tensor: int, remat: str, sequence: bool = False) -> float:
  """Activations one device keeps for the backward pass, `tokens` = its B x L.

  Per layer, in the compute dtype (sizes below for bf16; float32 doubles them), following
  Korthikanti et al. 2022 (Table 2) without dropout and with
  flash-style attention (no L x L scores kept): 'none' keeps both LayerNorm inputs, the QKV
  and MLP inputs (8 x BLD, replicated over tensor) and Q, K, V, the attention output and the
  GELU input and output (24 x BLD / tensor); 'dots' keeps the block input, the matmul
  outputs (QKV, attention out-projection, both MLP matmuls) and the fused attention kernel's
  output (models/transformer.py; its softmax statistics, H/D of that, are not counted):
  6 + 16 / tensor; 'full' keeps the
  block input (2 x BLD) and rebuilds one layer at a time. The float32 logits and their
  gradient (2 x 4 x B L V / tensor) come on top. With `sequence` parallelism (Megatron-SP:
  `sharding_rules.act_length='tensor'`) the parts replicated over tensor are split along L too.
  """
  bld = tokens * cfg.d_model * _act_bytes(cfg) / 2
  rep = tensor if sequence else 1
  none_layer = bld * (8 / rep + 24 / tensor)
  per_layer = {'none': none_layer, 'dots': bld * (6 / rep + 16 / tensor), 'full': 2 * bld / rep}
  layers = cfg.num_layers * per_layer[remat] + (none_layer if remat == 'full' else 0)
  return layers + 8 * tokens * cfg.vocab_size / tensor


@dataclasses.dataclass
class Plan:
  mesh: dict
  remat: str
  memory: dict  # bytes per device
  model_flops: float  # per step, all devices
  hardware_flops: float
  compute_s: float
  comm: list  # [(axis, kind, bytes sent per device, seconds, link)]
  step_s: float
  mfu: float
  sequence: bool = False  # sequence parallelism (activations split along L over tensor)

  @property
  def fits(self) -> bool:
    return self.memory['total'] <= HEADROOM * self.hbm

  hbm: float = 0.0


@functools.cache
def _cached(fn):
  """fn with its results kept: accounting builds the abstract model on every call."""
  return functools.lru_cache(maxsize=16)(fn)


def _axis_bandwidth(hw: hardware.Slice, mesh: dict) -> dict[str, tuple[float, str]]:
  """(one-way bytes/s per device, link name) for each mesh axis.

  Devices fill the mesh in order (data, fsdp, tensor), tensor fastest, islands (a TPU slice,
  a GPU node) contiguous: an axis whose span (its size x the sizes inside it) exceeds an
  island crosses the slow links. On a TPU torus the axes that stay on ICI share the chip's
  links evenly (a simplification: the real split depends on the slice's topology); NVSwitch
  gives each GPU its full NVLink bandwidth on every axis.
  """
  chip, out, inner = hw.chip, {}, 1
  fast_axes = []
  for axis in ('tensor', 'fsdp', 'data'):
    n = mesh[axis]
    span = n * inner
    inner = span
    if n == 1:
      continue
    if span > hw.island:
      out[axis] = (chip.slow_bw, chip.slow_name)
    else:
      fast_axes.append(axis)
  for axis in fast_axes:
    share = len(fast_axes) if chip.island == 0 else 1
    out[axis] = (chip.fast_bw / share, chip.fast_name)
  return out


def plan(
  cfg,
  hw: hardware.Slice,
  mesh: dict,
  seq_len: int,
  global_batch: int,
  remat: str,
  efficiency: float = 1.0,
  sequence: bool = False,
) -> Plan:
  """The plan of one mesh and remat setting. Sequence parallelism moves the same bytes (each
  tensor all-reduce becomes a reduce-scatter and an all-gather) and only saves memory."""
  from experiments.configs import default
  from models import accounting

  shards = mesh['data'] * mesh['fsdp']
  if global_batch % shards:
    raise ValueError(f'global_batch={global_batch} does not split over data x fsdp = {shards}')
  cfg = dataclasses.replace(cfg, remat=remat)
  table = comm.param_table(cfg, mesh, default.get_config().sharding_rules)
  params = PARAM_BYTES * sum(p.local for p in table)
  tokens = global_batch // shards * seq_len
  sequence = sequence and mesh['tensor'] > 1
  acts = activation_bytes(cfg, tokens, mesh['tensor'], remat, sequence)
  memory = {'params': params, 'grads': params, 'adam': 2 * params, 'activations': acts}
  memory['total'] = sum(memory.values())
  step_tokens = global_batch * seq_len
  model_flops = _cached(accounting.flops_per_token)(cfg, seq_len) * step_tokens
  hw_flops = _cached(accounting.hardware_flops_per_token)(cfg, seq_len) * step_tokens
  compute_s = hw_flops / hw.chips / (hw.chip.peak_flops * efficiency)
  bw = _axis_bandwidth(hw, mesh)
  volume = comm.step_volume(
    cfg,
    table,
    mesh,
    global_batch,
    seq_len,
    param_bytes=PARAM_BYTES,
    act_bytes=_act_bytes(cfg),
    remat=remat,
  )
  rows, hidden, exposed = [], 0.0, 0.0
  for (axis, kind), (result_bytes, n) in volume.items():
    sent = comm.ring_bytes(kind, result_bytes, n)
    # A reduction over several axes runs at the speed of the slowest of their links.
    speed, link = min(bw[a] for a in axis.split('+'))
    seconds = sent / speed if sent else 0.0
    rows.append((axis, kind, sent, seconds, link))
    if axis == 'tensor':
      exposed += seconds
    else:
      hidden += seconds
  step_s = max(compute_s, hidden) + exposed
  mfu = model_flops / (step_s * hw.chips * hw.chip.peak_flops)
  return Plan(
    mesh,
    remat,
    memory,
    model_flops,
    hw_flops,
    compute_s,
    rows,
    step_s,
    mfu,
    sequence=sequence,
    hbm=hw.chip.hbm_bytes,
  )


def candidate_meshes(cfg, chips: int, island: int, global_batch: int):
  """Every (data, fsdp, tensor) with product `chips`; tensor divides the heads and, on GPUs,
  stays inside a node; data x fsdp divides the batch."""
  for tensor in (1, 2, 4, 8, 16):
    if chips % tensor or cfg.num_heads % tensor or (island and tensor > island):
      continue
    rest = chips // tensor
    for fsdp in (f for f in range(1, rest + 1) if rest % f == 0):
      data = rest // fsdp
      if global_batch % (data * fsdp) == 0:
        yield {'data': data, 'fsdp': fsdp, 'tensor': tensor}


def suggest(cfg, hw, seq_len, global_batch, efficiency=1.0) -> Plan | None:
  """The fastest plan that fits in memory (ties: the smaller tensor axis, then less remat,
  then no sequence parallelism: it costs no time here, so it is chosen only to fit)."""
  best = None
  for mesh, remat, sequence in itertools.product(
    candidate_meshes(cfg, hw.chips, hw.island if hw.chip.island else 0, global_batch),
    REMATS,
    (False, True),
  ):
    if sequence and mesh['tensor'] == 1:
      continue
    p = plan(cfg, hw, mesh, seq_len, global_batch, remat, efficiency, sequence)
    if p.fits and (best is None or p.step_s < best.step_s * (1 - 1e-9)):
      best = p
  return best


def _gib(x: float) -> str:
  return f'{x / 2**30:8.2f} GiB'


def report(cfg, hw: hardware.Slice, p: Plan, seq_len: int, global_batch: int) -> str:
  from models import accounting

  counts = accounting.param_counts(cfg)
  mesh = ','.join(f'{k}={v}' for k, v in p.mesh.items())
  lines = [
    f'model: {counts["total"] / 1e9:.2f}B parameters ({counts["nonembedding"] / 1e9:.2f}B '
    f'non-embedding), {cfg.num_layers} layers, d_model {cfg.d_model}, {cfg.num_heads} heads',
    f'hardware: {hw.chips} x {hw.chip.name} (islands of {hw.island}), peak '
    f'{hw.chip.peak_flops / 1e12:.0f} TFLOP/s, HBM {hw.chip.hbm_bytes / 2**30:.0f} GiB',
    f'mesh: {mesh}; seq_len {seq_len}, global batch {global_batch} '
    f'({global_batch * seq_len / 1e6:.2f}M tokens), remat {p.remat}'
    + (', sequence parallel (--config.sharding_rules.act_length=tensor)' if p.sequence else ''),
    'memory per device:',
  ]
  for key in ('params', 'grads', 'adam'):
    lines.append(f'  {key:12s} {_gib(p.memory[key])}')
  tokens = global_batch // (p.mesh['data'] * p.mesh['fsdp']) * seq_len
  for remat in REMATS:
    mark = ' <-' if remat == p.remat else ''
    acts = activation_bytes(cfg, tokens, p.mesh['tensor'], remat, p.sequence)
    total = 4 * p.memory['params'] + acts
    fits = 'fits' if total <= HEADROOM * hw.chip.hbm_bytes else 'DOES NOT FIT'
    lines.append(f'  activations remat={remat:4s} {_gib(acts)}  total {_gib(total)} {fits}{mark}')
  lines += [
    f'FLOPs per step: model {p.model_flops:.3e}, executed {p.hardware_flops:.3e} '
    f'({p.hardware_flops / hw.chips:.3e} per device)',
    f'compute time: {p.compute_s * 1e3:.1f} ms',
    'communication per device per step:',
  ]
  for axis, kind, sent, seconds, link in p.comm:
    lines.append(
      f'  {axis:9s} {kind:14s} {sent / 1e9:9.3f} GB sent over {link:10s} {seconds * 1e3:9.1f} ms'
    )
  lines += [
    f'predicted step time: {p.step_s * 1e3:.1f} ms, '
    f'{global_batch * seq_len / p.step_s:,.0f} tokens/s, MFU {100 * p.mfu:.1f}%',
  ]
  return '\n'.join(lines)
