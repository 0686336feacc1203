"""Planted bugs: every one must make at least one test fail.

Each mutant is (name, file, exact old text, new text, test node ids). The script copies the
checkout to a scratch directory, applies one mutant at a time there (never here), runs only the
selected tests, and prints a table mutant -> failing tests. It exits non-zero if a mutant
survives, if an anchor (the old text) is missing or not unique (the code drifted: re-anchor the
mutant), or if the selected tests fail without any mutant.

  python -m tests.mutants                 # all, with an unmutated baseline run first
  python -m tests.mutants rope warmup     # only mutants whose name contains one of these
  python -m tests.mutants --markdown docs/MUTANTS.md
  python -m tests.mutants --ci            # what .ci/run does after the suite (below)

--ci runs every mutant against its own tests, each within --timeout seconds (default 600 with
--ci), without the baseline run: CI calls it right after the whole suite passed on the same
tree, which is that baseline. A mutant whose tests fail to finish in time counts as survived
(a slow machine must not pass for a caught bug). Times per mutant: docs/MUTANTS.md.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tests.cluster import REPO

SKIP = {'.git', '.venv', '.data', '__pycache__', '.pytest_cache', '.ruff_cache'}

MUTANTS = [
  (
    'causal mask off by one (sees the next token)',
    'models/attention.py',
    'mask_LxS = jnp.tril(jnp.ones((length, length), dtype=bool))',
    'mask_LxS = jnp.tril(jnp.ones((length, length), dtype=bool), k=1)',
    ['tests/test_models.py::test_causality'],
  ),
  (
    'attention scale 1/d instead of 1/sqrt(d)',
    'models/attention.py',
    '/ jnp.sqrt(jnp.float32(dh))',
    '/ jnp.float32(dh)',
    ['tests/test_models.py::test_attention_matches_textbook'],
  ),
  (
    'RoPE rotates the wrong way',
    'models/attention.py',
    'x2 * cos + x1 * sin',
    'x2 * cos - x1 * sin',
    [
      'tests/test_properties.py::test_rope_is_a_rotation_by_position_times_frequency',
      'tests/test_properties.py::test_rope_scores_depend_only_on_the_offset',
    ],
  ),
  (
    'LayerNorm without centering (RMS of x, not its variance)',
    'models/layers.py',
    'var = jnp.square(x - mean).mean(-1, keepdims=True)',
    'var = jnp.square(x).mean(-1, keepdims=True)',
    ['tests/test_torch_reference.py::test_jax_model_computes_the_reference_function'],
  ),
  (
    'bf16 dtype ignored (compute stays float32)',
    'models/transformer.py',
    'dt, pdt = _DTYPES[cfg.dtype], _DTYPES[cfg.param_dtype]',
    'dt, pdt = jnp.float32, _DTYPES[cfg.param_dtype]',
    ['tests/test_models.py::test_bfloat16_compute_close_to_float32'],
  ),
  (
    'cross-entropy with max instead of logsumexp',
    'train/step.py',
    'logz_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)',
    'logz_BxL = jnp.max(logits_BxLxV, axis=-1)',
    ['tests/test_properties.py::test_cross_entropy_matches_numpy'],
  ),
  (
    'z-loss ignored',
    'train/step.py',
    'loss += z_loss * jnp.square(logz_BxL).mean()',
    'loss += 0.0 * jnp.square(logz_BxL).mean()',
    ['tests/test_properties.py::test_z_loss_adds_its_closed_form_gradient'],
  ),
  (
    'gradient accumulation without the division',
    'train/step.py',
    'grads = jax.tree.map(lambda g: g / accum, grads)',
    'grads = jax.tree.map(lambda g: g, grads)',
    ['tests/test_train.py::test_grad_accumulation_matches_the_full_batch'],
  ),
  (
    'segment ids not passed to the model',
    'train/step.py',
    '    model = nnx.merge(graphdef, params)\n'
    "    segment_ids = batch.get('segment_ids') if config.data.segment_ids else None",
    '    model = nnx.merge(graphdef, params)\n    segment_ids = None',
    ['tests/test_train.py::test_training_with_segment_ids_masks_each_document'],
  ),
  (
    'warmup skipped',
    'train/optim.py',
    'warm = optax.linear_schedule(0.0, peak, max(warmup, 1))',
    'warm = optax.constant_schedule(peak)',
    ['tests/test_optim.py::test_schedule_matches_its_closed_form_everywhere'],
  ),
  (
    'WSD decays from the start of the stable phase',
    'train/optim.py',
    'stable = max(rest_steps - decay, 0)',
    'stable = 0',
    ['tests/test_optim.py::test_wsd_is_flat_then_linear'],
  ),
  (
    'weight decay on biases (rank >= 2 rule: q/k/v biases are 2-D)',
    'train/optim.py',
    'return len(others) < len(tuple(logical_axes or ())) and bool(others) and None not in others',
    'return len(tuple(logical_axes or ())) >= 2',
    [
      'tests/test_optim.py::test_decay_mask_is_the_weight_matrices',
      'tests/test_optim.py::test_decay_rule_reads_metadata_not_names',
    ],
  ),
  (
    'gradient clipping skipped',
    'train/optim.py',
    'clip = optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity()',
    'clip = optax.identity()',
    ['tests/test_optim.py::test_clipped_adamw_updates_equal_the_closed_form'],
  ),
  (
    'wrong mesh axis for heads',
    'experiments/configs/default.py',
    "'heads': 'tensor',",
    "'heads': 'fsdp',",
    [
      'tests/test_properties.py::test_spec_for_maps_logical_axes_to_mesh_axes',
      'tests/test_properties.py::test_spec_for_uses_a_mesh_axis_once_and_skips_size_one_axes',
    ],
  ),
  (
    'a mesh axis used twice in one spec',
    'train/sharding.py',
    'axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)',
    'axes = tuple(a for a in axes if mesh.shape[a] > 1)',
    [
      'tests/test_properties.py::test_spec_for_maps_logical_axes_to_mesh_axes',
      'tests/test_properties.py::test_spec_for_uses_a_mesh_axis_once_and_skips_size_one_axes',
    ],
  ),
  (
    'eval on the training split',
    'data/sources.py',
    'open_split(data_cfg, data_cfg.train_split), open_split(data_cfg, data_cfg.eval_split)',
    'open_split(data_cfg, data_cfg.train_split), open_split(data_cfg, data_cfg.train_split)',
    ['tests/test_data_pipeline.py::test_eval_batches_are_fixed_and_held_out'],
  ),
  (
    'data row stream reseeded on restore',
    'data/pipeline.py',
    '    self.state = state.copy()\n',
    '    self.state = state.copy()\n    self.seed += 1\n',
    ['tests/test_data_pipeline.py::test_packing_loses_nothing_and_restore_resumes_mid_document'],
  ),
  (
    'segment id changes at the separator instead of after it',
    'data/pipeline.py',
    'segment_ids_BxL = 1 + np.cumsum(eos, axis=1) - eos',
    'segment_ids_BxL = 1 + np.cumsum(eos, axis=1)',
    ['tests/test_data_pipeline.py::test_segment_ids_follow_document_separators'],
  ),
  (
    'bits per byte without the bytes-per-token factor',
    'train/loop.py',
    'mean / math.log(2) / bytes_per_token',
    'mean / math.log(2)',
    ['tests/test_properties.py::test_evaluate_reports_mean_standard_error_and_bits_per_byte'],
  ),
  (
    'standard error without the sqrt(n)',
    'train/loop.py',
    'losses.std(ddof=1) / np.sqrt(len(losses))',
    'losses.std(ddof=1)',
    ['tests/test_properties.py::test_evaluate_reports_mean_standard_error_and_bits_per_byte'],
  ),
  (
    'checkpoint saved under the step before the increment',
    'train/loop.py',
    'good.save(done, state,',
    'good.save(step, state,',
    ['tests/test_train.py::test_resume_is_bitwise_exact_and_survives_a_corrupted_checkpoint'],
  ),
  (
    "every epoch reads the documents in the first epoch's order",
    'data/pipeline.py',
    'self._perms[epoch] = np.random.default_rng([self.seed, epoch])',
    'self._perms[epoch] = np.random.default_rng([self.seed, 0])',
    [
      'tests/test_data_pipeline.py::'
      'test_streams_across_three_epochs_keep_documents_separators_and_order'
    ],
  ),
  (
    'a new epoch starts one token into its first document',
    'data/pipeline.py',
    '        epoch, index, offset = epoch + 1, 0, 0\n',
    '        epoch, index, offset = epoch + 1, 0, 1\n',
    [
      'tests/test_data_pipeline.py::'
      'test_streams_across_three_epochs_keep_documents_separators_and_order'
    ],
  ),
  (
    'eval streams counted per process (eval batches change with the process count)',
    'data/pipeline.py',
    'self._eval_units[batch_size], batch_size, first, rows, self.seq_len, EVAL_SEED',
    'self._eval_units[batch_size], rows, first, rows, self.seq_len, EVAL_SEED',
    ['tests/test_data_pipeline.py::test_eval_batches_do_not_depend_on_the_process_count'],
  ),
  (
    'batch split over the data axis only (fsdp replicas read the same rows)',
    'train/sharding.py',
    'return NamedSharding(mesh, PartitionSpec(batch_axes(rules) or None))',
    'return NamedSharding(mesh, PartitionSpec(batch_axes(rules)[:1] or None))',
    ['tests/test_properties.py::test_spec_for_uses_a_mesh_axis_once_and_skips_size_one_axes'],
  ),
  (
    'restore tries the oldest checkpoint first',
    'train/checkpoint.py',
    'steps = sorted(mngr.all_steps(), reverse=True)',
    'steps = sorted(mngr.all_steps())',
    ['tests/test_train.py::test_resume_is_bitwise_exact_and_survives_a_corrupted_checkpoint'],
  ),
  (
    'Adafactor decays every parameter (mask dropped)',
    'train/optim.py',
    'weight_decay_mask=mask,',
    'weight_decay_mask=None,',
    ['tests/test_optim.py::test_every_optimizer_decays_the_masked_leaves_by_lr_times_weight_decay'],
  ),
  (
    'Adafactor decay not scaled by the learning rate',
    'train/optim.py',
    'weight_decay_rate=lambda step: t.weight_decay * lr(step),',
    'weight_decay_rate=lambda step: t.weight_decay,',
    ['tests/test_optim.py::test_every_optimizer_decays_the_masked_leaves_by_lr_times_weight_decay'],
  ),
  (
    'Lion decays every parameter (mask dropped)',
    'train/optim.py',
    'b2=t.b2, weight_decay=t.weight_decay, mask=mask)',
    'b2=t.b2, weight_decay=t.weight_decay, mask=None)',
    ['tests/test_optim.py::test_every_optimizer_decays_the_masked_leaves_by_lr_times_weight_decay'],
  ),
  (
    'skipping ignores a non-finite gradient norm',
    'train/step.py',
    'finite = jnp.isfinite(nll) & jnp.isfinite(grad_norm)',
    'finite = jnp.isfinite(nll)',
    ['tests/test_divergence.py::test_a_finite_loss_with_a_nonfinite_gradient_norm_is_skipped'],
  ),
  (
    'the divergence rule reads only the loss',
    'train/metrics.py',
    'finite = all(math.isfinite(v) for v in self.last.values())',
    "finite = math.isfinite(self.last['loss'])",
    ['tests/test_divergence.py::test_a_finite_loss_with_a_nonfinite_gradient_norm_stops_the_run'],
  ),
  (
    'tokens/s per record, not per step',
    'train/metrics.py',
    'dt = (now - prev_t) / max(step - prev_step, 1)',
    'dt = now - prev_t',
    ['tests/test_train.py::test_tokens_per_s_and_mfu_follow_a_clock_the_test_controls'],
  ),
  (
    "MFU against one chip's peak, not the job's",
    'train/metrics.py',
    "return flops * jax.device_count(), f'{kind} table'",
    "return flops, f'{kind} table'",
    ['tests/test_train.py::test_peak_flops_is_the_published_chip_peak_times_the_devices'],
  ),
  (
    'a v5e (TPU v5 lite) takes the v5p peak',
    'train/metrics.py',
    "  'TPU v5 lite': 197e12,  # v5e\n  'TPU v5e': 197e12,\n  'TPU v5p': 459e12,\n"
    "  'TPU v5': 459e12,\n",
    "  'TPU v5': 459e12,\n  'TPU v5 lite': 197e12,  # v5e\n  'TPU v5e': 197e12,\n"
    "  'TPU v5p': 459e12,\n",
    ['tests/test_train.py::test_peak_flops_is_the_published_chip_peak_times_the_devices'],
  ),
  (
    'attention FLOPs counted at width d_model, not heads x head_dim',
    'models/shapes.py',
    '  d_attn = num_heads * head_dim\n',
    '  d_attn = d_model\n',
    ['tests/test_properties.py::test_flops_per_token_matches_xla_cost_analysis'],
  ),
  (
    'the compute frontier keeps points that do not improve on the envelope',
    'experiments/scaling.py',
    'on = np.concatenate([[True], loss[1:] < best[:-1]])',
    'on = np.ones(len(loss), bool)',
    ['tests/test_intervals.py::test_compute_frontier_fit_recovers_the_law'],
  ),
  (
    'jackknife variance without its (m - 1) inflation',
    'experiments/scaling.py',
    'se = float(np.sqrt((m - 1) / m * np.sum((v - v.mean()) ** 2)))',
    'se = float(np.sqrt(np.sum((v - v.mean()) ** 2) / m))',
    [
      'tests/test_intervals.py::test_jackknife_interval_of_a_mean_covers_at_its_rate_with_the_t_width'
    ],
  ),
  (
    'jackknife interval with the normal quantile instead of Student t',
    'experiments/scaling.py',
    't = float(stats.t.ppf(0.5 + level / 2, m - 1))',
    't = float(stats.norm.ppf(0.5 + level / 2))',
    [
      'tests/test_intervals.py::test_jackknife_interval_of_a_mean_covers_at_its_rate_with_the_t_width'
    ],
  ),
  (
    'a v5e slice created with the v5p image',
    'launch/tpu.py',
    "'v5e': 'v2-alpha-tpuv5-lite',",
    "'v5e': 'v2-alpha-tpuv5',",
    ['tests/test_launchers.py::test_every_tpu_generation_gets_its_published_software_image'],
  ),
  (
    'the workdir probe skipped for a folder that exists',
    'train/distributed.py',
    "  probe = files.join(where, f'.write_probe.",
    "  if os.path.isdir(where):\n    return\n  probe = files.join(where, f'.write_probe.",
    ['tests/test_distributed.py::test_read_only_workdir_is_rejected'],
  ),
  (
    "the torch reference's final LayerNorm eps changed, fixture not regenerated",
    'benchmarks/torch_reference.py',
    'self.ln_f = nn.LayerNorm(d_model, eps=1e-5)',
    'self.ln_f = nn.LayerNorm(d_model, eps=1e-6)',
    ['tests/test_torch_reference.py::test_fixture_was_made_by_the_reference_as_it_is_now'],
  ),
  (
    'gs:// appends rewrite the object on every line',
    'core/files.py',
    'if time.monotonic() - self._last_write >= self.min_interval_s:',
    'if True:',
    ['tests/test_gcs.py::test_remote_appends_are_buffered_to_one_write_per_second'],
  ),
  (
    'SIGINT on a multi-process run not forwarded to the preemption service',
    'train/preemption.py',
    '      os.kill(os.getpid(), signal.SIGTERM)  # into JAX',
    '      pass  # into JAX',
    ['tests/test_preemption.py::test_two_processes_save_the_same_step_when_one_gets_a_signal[2]'],
  ),
  # intervals, frontier, branching runs
  (
    'bootstrap noise sd fixed at the residual SE (3 dof read as known)',
    'experiments/scaling.py',
    'var = rss[:, None, None] / rng.chisquare(dof, (m, n, 1))',
    'var = rss[:, None, None] / dof * np.ones((m, n, 1))',
    ['tests/test_scaling.py::test_alpha_interval_covers_the_truth_at_its_stated_rate'],
  ),
  (
    'compute frontier keeps the warmup evaluations',
    'experiments/scaling.py',
    "keep = (c['flops'] > 0) & (np.asarray(c['step']) > _warmup_steps(r))",
    "keep = c['flops'] > 0",
    ['tests/test_scaling.py::test_compute_frontier_starts_at_the_first_point_and_skips_warmup'],
  ),
  (
    'IsoFLOP takes a parabola vertex outside the measured sizes',
    'experiments/scaling.py',
    "fit = _isoflop_from_profiles(profiles, inside=True, what='budgets')",
    "fit = _isoflop_from_profiles(profiles, inside=False, what='budgets')",
    ['tests/test_scaling.py::test_isoflop_uses_only_minima_inside_the_sizes_and_has_intervals'],
  ),
  (
    'L(N) takes the best seed instead of the mean over seeds',
    'experiments/scaling.py',
    'means = {lr: np.mean([r.final_eval_loss for r in rs]) for lr, rs in by_lr.items()}',
    'means = {lr: np.min([r.final_eval_loss for r in rs]) for lr, rs in by_lr.items()}',
    ['tests/test_compare.py::test_mean_over_seeds_not_the_minimum'],
  ),
  (
    'cooldown branch starts with a fresh optimizer (moments and count not restored)',
    'train/checkpoint.py',
    '    return (*restored, False)\n',
    "    return restored[0], {**restored[1], 'opt': trainer.init()['opt']}, restored[2], False\n",
    ['tests/test_branch.py::test_cooldown_branch_equals_the_same_schedule_from_scratch'],
  ),
  (
    'cooldown branch restarts the data iterator',
    'train/loop.py',
    '  if data_state is not None:\n    it.set_state(sharding.local_rows(data_state))\n',
    '  if resumed:\n    it.set_state(sharding.local_rows(data_state))\n',
    ['tests/test_branch.py::test_cooldown_branch_equals_the_same_schedule_from_scratch'],
  ),
  (
    'sweep starts a branch before its parent has finished',
    'launch/pool.py',
    "    if parent in running or any(r.name == parent for r in queue):\n      return 'wait'",
    "    if parent in running or any(r.name == parent for r in queue):\n      return ''",
    ['tests/test_branch.py::test_sweep_runs_the_branch_after_its_parent'],
  ),
  (
    "relaunched sweep compares a branch's parent as the sweep names it, not as it ran",
    'launch/pool.py',
    '  overrides = run.train_overrides(run_dir)\n',
    '  overrides = dict(run.overrides)\n',
    ['tests/test_branch.py::test_sweep_runs_the_branch_after_its_parent'],
  ),
  # datasets, tokenizers, sweeps that never reuse a changed run
  (
    'stale-run check compares only the keys the sweep overrides',
    'launch/pool.py',
    'if a == b or ((a is missing or b is missing) and key not in overrides):',
    'if a == b or key not in overrides:',
    [
      'tests/test_sweep.py::test_changed_runs_are_refused_or_rerun_and_sweep_json_stays_true',
    ],
  ),
  (
    'bits per byte over characters of the held-out text, not its UTF-8 bytes',
    'data/pipeline.py',
    'n_bytes += len(text)',
    "n_bytes += len(text.decode('utf-8', 'replace'))",
    [
      'tests/test_data_pipeline.py::'
      'test_bpe_json_tokenizer_round_trips_and_bits_per_byte_count_utf8_bytes',
    ],
  ),
  (
    'Parquet row group read by its index over all files, not within its file',
    'data/files.py',
    'read_row_group(rg, columns=[self.key])',
    'read_row_group(g % self._pq.ParquetFile(f).metadata.num_row_groups, columns=[self.key])',
    [
      'tests/test_data_pipeline.py::test_parquet_and_jsonl_splits_documents_resume_and_hosts',
    ],
  ),
  (
    'JSONL index keeps blank lines (an empty document per blank line)',
    'data/files.py',
    'if data[s:e].strip():',
    'if data[s:e]:',
    [
      'tests/test_data_pipeline.py::test_parquet_and_jsonl_splits_documents_resume_and_hosts',
    ],
  ),
  (
    'accelerator sweeps evaluate on a validation split that lm1b does not have',
    'experiments/sweeps/accel_ladder.py',
    "    'data.eval_split': 'test',  # TFDS lm1b has only 'train' and 'test'\n",
    '',
    ['tests/test_data_pipeline.py::test_real_lm1b_split_names_and_the_accelerator_sweeps'],
  ),
  # the kv cache, the block options and their accounting, the profiler hook.
  (
    'KV cache written one slot late',
    'models/attention.py',
    '    at = (0, pos, 0, 0)',
    '    at = (0, pos + 1, 0, 0)',
    [
      'tests/test_decode.py::test_greedy_decoding_with_the_cache_equals_the_full_forward_argmax',
      'tests/test_decode.py::test_cached_logits_equal_the_full_pass_step_by_step',
    ],
  ),
  (
    'SwiGLU gate and up projections swapped',
    'models/layers.py',
    'h_BxLxF = jax.nn.silu(h_BxLxF) * up_BxLxF',
    'h_BxLxF = h_BxLxF * jax.nn.silu(up_BxLxF)',
    ['tests/test_blocks.py::test_swiglu_is_silu_gate_times_up_then_down'],
  ),
  (
    'SwiGLU counted as two matrices (parameters and FLOPs)',
    'models/shapes.py',
    "matrices = 3 if mlp == 'swiglu' else 2",
    'matrices = 2',
    ['tests/test_blocks.py::test_closed_form_counts_equal_the_leaf_sum'],
  ),
  (
    'qk-norm on the queries only',
    'models/attention.py',
    'q_BxLxHxDh, k_BxSxKxDh = self.q_norm(q_BxLxHxDh), self.k_norm(k_BxSxKxDh)',
    'q_BxLxHxDh = self.q_norm(q_BxLxHxDh)',
    ['tests/test_blocks.py::test_qk_norm_normalizes_each_heads_query_and_key_before_the_dot'],
  ),
  (
    'RMSNorm centers its input (a LayerNorm without bias)',
    'models/layers.py',
    'y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps)',
    'x = x - x.mean(-1, keepdims=True)\n'
    '    y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps)',
    ['tests/test_blocks.py::test_rmsnorm_is_x_over_rms_times_scale'],
  ),
  (
    'use_bias=False keeps the LayerNorm biases',
    'models/layers.py',
    'return LayerNorm(dim, rngs=rngs, param_dtype=param_dtype, use_bias=use_bias, axis=axis)',
    'return LayerNorm(dim, rngs=rngs, param_dtype=param_dtype, use_bias=True, axis=axis)',
    ['tests/test_blocks.py::test_use_bias_false_removes_every_bias'],
  ),
  # muP (models/mup.py) and its coordinate check
  (
    'muP output multiplier dropped (logits not divided by the width multiplier)',
    'models/transformer.py',
    'x_BxLxD = x_BxLxD * jnp.asarray(1.0 / cfg.width_mult, x_BxLxD.dtype)',
    'x_BxLxD = x_BxLxD * jnp.asarray(1.0, x_BxLxD.dtype)',
    ['tests/test_mup.py::test_coordinate_check_flat_under_mup_and_growing_under_sp'],
  ),
  (
    'muP hidden-matrix Adam lr not divided by the width multiplier',
    'models/mup.py',
    "return 1.0 / m if is_hidden(var.get_metadata().get('logical_axes')) else 1.0",
    'return 1.0',
    [
      'tests/test_mup.py::test_first_adam_step_moves_hidden_matrices_by_lr_over_m',
      'tests/test_mup.py::test_coordinate_check_flat_under_mup_and_growing_under_sp',
    ],
  ),
  (
    'muP hidden init left at SP (std not divided by sqrt(m))',
    'models/transformer.py',
    'mup.scale_hidden_init(self, cfg.width_mult)',
    'mup.scale_hidden_init(self, 1.0)',
    ['tests/test_mup.py::test_hidden_init_is_sp_over_sqrt_m_and_the_rest_is_sp'],
  ),
  (
    'muP attention scores QK^T / sqrt(Dh) (the SP scale)',
    'models/transformer.py',
    "score_scale = 1.0 / math.sqrt(cfg.head_dim) if cfg.parametrization == 'mup' else 1.0",
    'score_scale = 1.0',
    ['tests/test_mup.py::test_mup_scores_are_qk_over_head_dim'],
  ),
  # the accelerator program (tests/test_gpu_program.py, lowered for cuda/tpu on CPU)
  (
    "remat='dots' no longer keeps the fused attention kernel's outputs (recomputed in backward)",
    'models/transformer.py',
    '  if prim.name in FUSED_PRIMITIVES:\n    return True\n',
    '',
    [
      'tests/test_gpu_program.py::test_cuda_one_attention_forward_and_one_backward_per_layer',
      'tests/test_gpu_program.py::test_tpu_splash_kernels_once_each',
    ],
  ),
  (
    'logits cotangent back to float32 (both vocabulary backward matmuls in f32)',
    'models/transformer.py',
    '  return _low_precision_logits(x_BxLxD, w_DxV)\n',
    '  return dense(x_BxLxD, w_DxV, out_dtype=jnp.float32)\n',
    ['tests/test_gpu_program.py::test_vocabulary_matmuls_are_bf16_accumulated_in_f32'],
  ),
  (
    'weights cast inside the scanned layer again (35 more casts per layer)',
    'models/transformer.py',
    '      stacked_state = _cast_outside_norms(self.blocks, stacked_state, dt)\n',
    '',
    ['tests/test_gpu_program.py::test_casts_per_layer_within_budget'],
  ),
  (
    'LayerNorm parameters cast to bf16 with the weights (changes the model)',
    'models/transformer.py',
    'return w if any(keys[: len(n)] == n for n in norms) else w.astype(dtype)',
    'return w.astype(dtype)',
    ['tests/test_gpu_program.py::test_casting_outside_the_scan_changes_no_value'],
  ),
  (
    'the model reads its platform from the running backend (starts it before XLA_FLAGS are set)',
    'models/shapes.py',
    "  choose('platform', platform, PLATFORMS)\n",
    '  import jax\n\n  platform = platform or jax.default_backend()\n'
    "  choose('platform', platform, PLATFORMS)\n",
    ['tests/test_attention_impl.py::test_model_config_starts_no_backend'],
  ),
  (
    'auto does not fall back when the fused kernel fails to compile',
    'train/step.py',
    "    reason = kernels.kernel_failure(e) if model_cfg.attention_impl == 'auto' else ''\n",
    "    reason = ''\n",
    ['tests/test_attention_impl.py::test_auto_survives_a_kernel_that_does_not_compile'],
  ),
  (
    'gpu_check.sh row limits over its budget',
    'benchmarks/gpu_check.sh',
    'T_MED=65; T_REF=100;',
    'T_MED=75; T_REF=120;',
    ['tests/test_benchmarks.py::test_gpu_check_rows_fit_the_budget_most_informative_first'],
  ),
  # the run-folder contract
  (
    'a run counts as done once its config is written',
    'core/rundir.py',
    '    return files.exists(self.summary_path)',
    '    return files.exists(self.config_path)',
    [
      'tests/test_rundir.py::test_a_run_is_done_exactly_when_its_summary_is_written_and_every_reader_agrees',
      'tests/test_sweep.py::test_runner_skips_reruns_and_records_failures',
    ],
  ),
  (
    "a branch's parent looked up inside the branch's own folder",
    'core/rundir.py',
    "    parent = posixpath.dirname(self.path.rstrip('/'))",
    '    parent = self.path',
    ['tests/test_rundir.py::test_remote_paths_stay_remote_and_a_branch_parent_is_a_sibling'],
  ),
  # shape module: one JAX-free set of model-shape rules (models/shapes.py) read by every reader
  (
    'head_dim derived without checking that the heads divide d_model',
    'models/shapes.py',
    '  if d_model % num_heads:\n    raise ValueError(\n',
    '  if d_model < num_heads:\n    raise ValueError(\n',
    [
      'tests/test_shapes.py::test_every_reader_derives_the_same_sizes_and_refuses_the_same_shapes',
    ],
  ),
  (
    'the sweep planner checks a fused kernel against the machine it plans on',
    'train/validate.py',
    "  platform = _backend() if on_this_machine and fused else ''\n",
    "  platform = _backend() if fused else ''\n",
    [
      'tests/test_shapes.py::'
      'test_a_fused_kernel_is_planned_anywhere_and_refused_on_the_wrong_machine',
    ],
  ),
  (
    'the shape module holds JAX dtypes (expanding a sweep imports JAX)',
    'models/shapes.py',
    "DTYPES = ('float32', 'bfloat16', 'float16')",
    'import jax.numpy as jnp\n\n'
    "DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}",
    ['tests/test_shapes.py::test_expanding_a_sweep_imports_no_jax'],
  ),
  (
    "model.vocab_size not checked against the tokenizer's",
    'models/shapes.py',
    '    if self.vocab_size and self.vocab_size != vocab_size:\n',
    '    if False:\n',
    [
      'tests/test_bad_inputs.py::test_bad_input_fails_cleanly_and_writes_nothing[train/vocab-not-the-tokenizers]'
    ],
  ),
  (
    "the run's mesh built without checking the batches against it",
    'train/sharding.py',
    '  mesh = _mesh(list(jax.devices()), sizes)\n  check_batch(config, mesh)\n',
    '  mesh = _mesh(list(jax.devices()), sizes)\n',
    [
      'tests/test_bad_inputs.py::test_bad_input_fails_cleanly_and_writes_nothing[train/eval-batch-not-splitting]'
    ],
  ),
  (
    "the mesh checked over every device, not the benchmark's --num_devices",
    'train/validate.py',
    'shapes.mesh_shape(config.mesh, num_devices or _device_count())',
    'shapes.mesh_shape(config.mesh, _device_count())',
    ['tests/test_benchmarks.py::test_mesh_is_checked_against_the_devices_the_benchmark_uses'],
  ),
  # the cooldown premise as a whole
  (
    'cooldown premise passes on one matching pair',
    'experiments/scaling.py',
    "    'verdict': 'pass' if passed >= MIN_MATCHING_PAIRS else 'fail',\n",
    "    'verdict': 'pass' if passed >= 1 else 'fail',\n",
    ['tests/test_scaling.py::test_cooldown_checks_have_verdicts_that_can_fail'],
  ),
  (
    'cooldown premise said to hold from a D where some pair fails',
    'experiments/scaling.py',
    '    if not all(by_tokens[t]):\n',
    '    if not any(by_tokens[t]):\n',
    ['tests/test_scaling.py::test_cooldown_checks_have_verdicts_that_can_fail'],
  ),
  # the per-size lr optimum of a wide grid
  (
    'lr optimum from a parabola through every rate of a wide grid',
    'experiments/scaling.py',
    '    window = lrs[lo : lo + LR_WINDOW]\n',
    '    window = lrs\n',
    ['tests/test_compare.py::test_lr_optimum_from_the_rates_around_the_best_of_a_wide_grid'],
  ),
  (
    'lr parabola through the lowest rates, not those around the best',
    'experiments/scaling.py',
    '    lo = max(0, min(i - LR_WINDOW // 2, len(lrs) - LR_WINDOW))\n',
    '    lo = 0\n',
    ['tests/test_compare.py::test_lr_optimum_from_the_rates_around_the_best_of_a_wide_grid'],
  ),
]


def copy_tree(dst: str) -> None:
  shutil.copytree(REPO, dst, ignore=lambda d, names: [n for n in names if n in SKIP])
  venv = os.path.join(REPO, '.venv')
  if os.path.exists(venv):
    os.symlink(os.path.realpath(venv), os.path.join(dst, '.venv'))


def run_tests(root: str, selection: list[str], timeout: float = 3600) -> tuple[int, list[str], str]:
  """pytest's exit status (None: out of time), the failed node ids, and the output."""
  flags = ['-q', '-x', '-rf', '-p', 'no:xdist', '-p', 'no:cacheprovider']
  cmd = [sys.executable, '-m', 'pytest', *flags, *selection]
  env = dict(os.environ, PYTHONDONTWRITEBYTECODE='1')
  # Its own process group, so that training processes a test started die with it on a timeout.
  proc = subprocess.Popen(
    cmd,
    cwd=root,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    start_new_session=True,
  )
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    return None, [], out

  failed = re.findall(r'^FAILED (\S+)', out, flags=re.M)
  return proc.returncode, failed, out


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('names', nargs='*', help='only mutants whose name contains one of these')
  ap.add_argument('--no-baseline', action='store_true', help='skip the unmutated run')
  ap.add_argument('--markdown', help='also write the table to this file')
  ap.add_argument('--ci', action='store_true', help='no baseline, --timeout 600 (the docstring)')
  ap.add_argument('--timeout', type=float, help='seconds per mutant; out of time = survived')
  args = ap.parse_args()
  timeout = args.timeout or (600.0 if args.ci else 3600.0)
  baseline = not (args.no_baseline or args.ci)
  chosen = [m for m in MUTANTS if not args.names or any(n in m[0] for n in args.names)]
  # Every anchor must be present exactly once before anything runs.
  for name, path, old, _, _ in chosen:
    count = open(os.path.join(REPO, path)).read().count(old)
    if count != 1:
      what = 'MISSING' if count == 0 else 'NOT UNIQUE'
      msg = f'ANCHOR {what}: {name!r}: {path} holds {old!r} {count} times; re-anchor it'
      print(msg, file=sys.stderr)
      return 2
  t_start = time.time()
  with tempfile.TemporaryDirectory(prefix='mutants-') as tmp:
    root = os.path.join(tmp, 'repo')
    copy_tree(root)
    if baseline:
      rc, failed, out = run_tests(root, sorted({s for m in chosen for s in m[4]}))
      if rc != 0:
        print(out[-3000:], file=sys.stderr)
        print(f'BASELINE FAILS without any mutant: {failed}', file=sys.stderr)
        return 3
    rows, survivors = [], []
    for name, path, old, new, selection in chosen:
      target = os.path.join(root, path)
      original = open(target).read()
      with open(target, 'w') as f:
        f.write(original.replace(old, new, 1))
      t0 = time.time()
      try:
        rc, failed, out = run_tests(root, selection, timeout)
      finally:
        with open(target, 'w') as f:
          f.write(original)
      if rc == 1 and failed:
        verdict = ', '.join(f.split('/')[-1] for f in failed)
      elif rc is None:
        verdict = f'SURVIVED (out of time: {timeout:.0f} s)'
        survivors.append(name)
      else:
        verdict = f'SURVIVED (pytest exit {rc})'
        survivors.append(name)
        print(out[-2000:], file=sys.stderr)
      rows.append((name, path, ' '.join(selection), verdict, time.time() - t0))
      print(f'{time.time() - t0:6.0f}s  {name}: {verdict}', flush=True)
  total = time.time() - t_start
  table = ['| mutant | file | tests run | failing tests | s |', '|---|---|---|---|---|']
  table += [f'| {n} | `{p}` | `{s}` | {v} | {t:.0f} |' for n, p, s, v, t in rows]
  text = '\n'.join(table) + f'\n\n{len(rows)} mutants, {len(survivors)} survived, {total:.0f} s.\n'
  print(text)
  if args.markdown:
    with open(args.markdown, 'w') as f:
      f.write(MARKDOWN_HEAD + text)
  return 1 if survivors else 0


MARKDOWN_HEAD = """# Planted bugs (mutants) and the tests that catch them

Written by `python -m tests.mutants --ci --markdown docs/MUTANTS.md`. Each mutant is applied
alone to a scratch copy of the checkout; only the listed tests run (`-x`: the first failure is
shown). CI (`.ci/run`) runs the same command after the suite: a mutant that survives, or whose
tests do not finish within 600 s, fails CI. A mutant whose anchor text is gone makes the script
fail loudly: re-anchor it in tests/mutants.py.

"""

if __name__ == '__main__':
  sys.exit(main())
