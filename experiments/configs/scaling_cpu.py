"""Base config of the CPU scaling sweeps (experiments/sweeps/*.py): default.py plus overrides.

Every run of a sweep starts from this config and overrides only the model shape, the number
of steps, the learning rate and its tags, so the runs of a sweep differ in nothing else:
same data (byte-level Shakespeare), context, batch, schedule shape and held-out eval set.
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  # Context 128 bytes; the position table is no longer than the context it serves.
  c.data.seq_len = 128
  c.model.max_seq_len = 128
  # 16 x 128 = 2,048 tokens per step: far below any critical batch size at these losses, so
  # the loss depends on tokens seen rather than on steps taken (Kaplan et al. 2020, Sec. 5.1),
  # and large enough that a step of the smallest model is not all Python overhead.
  c.train.global_batch = 16
  c.train.schedule = 'cosine'
  c.train.min_lr_ratio = 0.1  # GPT-3: cosine decay to 10% of the peak.
  # One larger held-out set for every run of every sweep: 16 x 16 sequences of 128 bytes
  # (32k tokens), a standard error of ~0.01 nats on the final loss.
  c.eval.batches = 16
  c.eval.batch_size = 16
  # Extra evaluations at ~this many log-spaced steps (0: none), so learning curves are curves
  # on a log-FLOPs axis (train/loop.py:log_spaced_steps).
  c.eval.log_points = 0
  c.log_every = 10
  # Sweep files give every run its own steps, warmup, eval and checkpoint intervals
  # (experiments/sweeps/common.py:train_overrides); these are placeholders.
  c.train.steps = 200
  c.train.warmup_steps = 20
  c.eval.every = 100
  c.checkpoint.every = 100
  # Tags that sweeps set and analysis reads (summary['config']['tags']). default.py has
  # budget_flops (IsoFLOP budget) and group (series label); these are the CPU sweeps' extras.
  c.tags.sweep = ''  # the sweep file's stem
  c.tags.target_nonembed = 0  # fixed-N sweeps (heads, aspect, shape): the N they hold
  c.tags.tokens = 0  # tokens the run is trained on (token budget, IsoFLOP)
  return c
