"""Accelerator tables for the planner: peak bf16 FLOP/s, HBM, and the links between chips.

Every figure is per chip (TPU) or per GPU, dense (no sparsity), in SI units (1 GB = 1e9 B).
Link bandwidths are ONE-WAY per chip: what one chip can send while it also receives.

Sources:
* TPU v4, v5e, v5p, v6e: Cloud TPU system architecture pages
  (https://cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e): peak bf16, HBM capacity and
  bandwidth, and "interchip interconnect bandwidth" per chip (v4 2,400 Gbps, v5e 1,600 Gbps,
  v5p 4,800 Gbps, v6e 3,584 Gbps). That figure is the sum over the chip's links of one
  direction: "How to Scale Your Model" gives one-way 45 GB/s per link for v4/v5e and 90 GB/s
  for v5p/v6e, x 6 links (v4, v5p: 3-D tori) or x 4 (v5e, v6e: 2-D) = 270/180/540/360 GB/s,
  within 20% of the Cloud figures used here.
  Slice names: the v4-N and v5p-N suffix counts TensorCores (2 per chip), v5e/v6e count chips
  (https://cloud.google.com/tpu/docs/system-architecture-tpu-vm, "TPU versions").
* DCN between TPU slices: ~25 GB/s per host of 4 chips, 6.25 GB/s per chip one way, as in
  "How to Scale Your Model" (Austin et al., Google DeepMind 2025, Part 2 "TPUs"); a rough
  figure, it depends on the data-centre network the slice sits in.
* A100 SXM 80GB: NVIDIA A100 datasheet (312 TFLOP/s bf16 dense, 2,039 GB/s HBM2e,
  NVLink 3 600 GB/s total = 300 GB/s one way). DGX A100: 8 x 200 Gb/s HDR InfiniBand, one
  per GPU = 25 GB/s one way.
* H100 SXM5 80GB: NVIDIA H100 datasheet (989 TFLOP/s bf16 dense, 3.35 TB/s HBM3, NVLink 4
  900 GB/s total = 450 GB/s one way). DGX H100: 8 x 400 Gb/s NDR InfiniBand, one per GPU =
  50 GB/s one way.
* H200 SXM 141GB: NVIDIA H200 datasheet (989 TFLOP/s bf16 dense as H100, 4.8 TB/s HBM3e,
  NVLink 900 GB/s total); DGX H200 networking as DGX H100.
* cpu-2core: this project's CI-class VM, float32 matmul rate measured through XLA
  (benchmarks/RESULTS.md, 0.207 TFLOP/s); there is no interconnect.
"""

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  peak_flops: float  # dense bf16 FLOP/s (cpu-2core: float32)
  hbm_bytes: float
  hbm_bw: float  # bytes/s
  fast_bw: float  # one-way bytes/s per chip over ICI (TPU) or NVLink (GPU), all links together
  slow_bw: float  # one-way bytes/s per chip over DCN (TPU, between slices) or InfiniBand (GPU)
  fast_name: str
  slow_name: str
  island: int  # chips joined by the fast links: a TPU slice is set by its name; a GPU node
  chips_per_name_unit: float  # chips per unit of the name's suffix (v4/v5p: 0.5 per core)


GB = 1e9
CHIPS: dict[str, Chip] = {
  c.name: c
  for c in [
    Chip('v4', 275e12, 32 * 2**30, 1200 * GB, 300 * GB, 6.25 * GB, 'ICI', 'DCN', 0, 0.5),
    Chip('v5e', 197e12, 16 * GB, 819 * GB, 200 * GB, 6.25 * GB, 'ICI', 'DCN', 0, 1.0),
    Chip('v5p', 459e12, 95 * GB, 2765 * GB, 600 * GB, 6.25 * GB, 'ICI', 'DCN', 0, 0.5),
    Chip('v6e', 918e12, 32 * GB, 1640 * GB, 448 * GB, 6.25 * GB, 'ICI', 'DCN', 0, 1.0),
    Chip('a100', 312e12, 80 * GB, 2039 * GB, 300 * GB, 25 * GB, 'NVLink', 'InfiniBand', 8, 1.0),
    Chip('h100', 989e12, 80 * GB, 3350 * GB, 450 * GB, 50 * GB, 'NVLink', 'InfiniBand', 8, 1.0),
    Chip('h200', 989e12, 141 * GB, 4800 * GB, 450 * GB, 50 * GB, 'NVLink', 'InfiniBand', 8, 1.0),
    Chip('cpu-2core', 0.207e12, 24 * GB, 10 * GB, 0.0, 0.0, 'none', 'none', 1, 1.0),
  ]
}


@dataclasses.dataclass(frozen=True)
class Slice:
  """`chips` chips of one kind; fast links join groups of `island` chips, slow links the rest."""

  chip: Chip
  chips: int
  island: int


def parse(spec: str, slices: int = 1) -> Slice:
  """'v5p-256' (128 chips), 'v5e-256', 'h100-64' (8 nodes of 8), 'cpu-2core', ...

  A TPU name is one slice (ICI inside); `slices` > 1 joins that many over DCN. A GPU name
  counts GPUs, grouped into NVLink nodes of 8 joined by InfiniBand.
  """
  if spec in CHIPS and CHIPS[spec].island == 1:
    return Slice(CHIPS[spec], 1, 1)
  m = re.fullmatch(r'([a-z0-9]+)-(\d+)', spec)
  if not m or m.group(1) not in CHIPS:
    kinds = ', '.join(f'{k}-N' for k in CHIPS if k != 'cpu-2core')
    raise ValueError(f'unknown hardware {spec!r}; use one of {kinds}, or cpu-2core')
  chip, n = CHIPS[m.group(1)], int(m.group(2))
  chips = n * chip.chips_per_name_unit
  if chips < 1 or chips != int(chips):
    raise ValueError(
      f'{spec}: the {chip.name} suffix counts TensorCores, 2 per chip; use an even N'
    )
  chips = int(chips)
  if slices < 1:
    raise ValueError(f'slices must be >= 1, got {slices}')
  if chip.island:  # GPUs: nodes of 8
    if slices != 1:
      raise ValueError(f'--slices is for TPU slices over DCN; {spec} is GPU nodes already')
    return Slice(chip, chips, min(chip.island, chips))
  return Slice(chip, chips * slices, chips)
