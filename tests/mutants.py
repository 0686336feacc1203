"""Planted bugs: every one must make at least one test fail.

Each mutant is (name, file, exact old text, new text, test node ids). The script copies the
checkout to a scratch directory, applies one mutant at a time there (never here), runs only the
selected tests, and prints a table mutant -> failing tests. It exits non-zero if a mutant
survives, if an anchor (the old text) is missing or not unique (the code drifted: re-anchor the
mutant), or if the selected tests fail without any mutant.

  python -m tests.mutants                 # all, with an unmutated baseline run first
  python -m tests.mutants rope warmup     # only mutants whose name contains one of these
  python -m tests.mutants --markdown docs/MUTANTS.md
"""

import argparse
import os
import re
import shutil
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
    'data/pipeline.py',
    'self._eval_source = sources.open_split(data_cfg, data_cfg.eval_split)',
    'self._eval_source = sources.open_split(data_cfg, data_cfg.train_split)',
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
    'segment_ids_BxT = 1 + np.cumsum(eos, axis=1) - eos',
    'segment_ids_BxT = 1 + np.cumsum(eos, axis=1)',
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
  # issue 22: the accelerator program (tests/test_gpu_program.py, lowered for cuda/tpu on CPU)
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
    'models/transformer.py',
    '    if platform not in PLATFORMS:\n',
    '    platform = platform or jax.default_backend()\n    if platform not in PLATFORMS:\n',
    ['tests/test_attention_impl.py::test_model_config_starts_no_backend'],
  ),
  (
    'auto does not fall back when the fused kernel fails to compile',
    'train/step.py',
    "    reason = attention.kernel_failure(e) if model_cfg.attention_impl == 'auto' else ''\n",
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
]


def copy_tree(dst: str) -> None:
  shutil.copytree(REPO, dst, ignore=lambda d, names: [n for n in names if n in SKIP])
  venv = os.path.join(REPO, '.venv')
  if os.path.exists(venv):
    os.symlink(os.path.realpath(venv), os.path.join(dst, '.venv'))


def run_tests(root: str, selection: list[str]) -> tuple[int, list[str], str]:
  flags = ['-q', '-x', '-rf', '-p', 'no:xdist', '-p', 'no:cacheprovider']
  cmd = [sys.executable, '-m', 'pytest', *flags, *selection]
  env = dict(os.environ, PYTHONDONTWRITEBYTECODE='1')
  proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=3600)
  out = proc.stdout + proc.stderr
  failed = re.findall(r'^FAILED (\S+)', out, flags=re.M)
  return proc.returncode, failed, out


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('names', nargs='*', help='only mutants whose name contains one of these')
  ap.add_argument('--no-baseline', action='store_true', help='skip the unmutated run')
  ap.add_argument('--markdown', help='also write the table to this file')
  args = ap.parse_args()
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
    if not args.no_baseline:
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
        rc, failed, out = run_tests(root, selection)
      finally:
        with open(target, 'w') as f:
          f.write(original)
      if rc == 1 and failed:
        verdict = ', '.join(f.split('/')[-1] for f in failed)
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

Written by `python -m tests.mutants --markdown docs/MUTANTS.md`. Each mutant is applied alone to
a scratch copy of the checkout; only the listed tests run (`-x`: the first failure is shown).
A mutant whose anchor text is gone makes the script fail loudly: re-anchor it in tests/mutants.py.

"""

if __name__ == '__main__':
  sys.exit(main())
