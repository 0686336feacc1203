"""What a researcher does with a trained run: sample it (launch.sample), evaluate it on another
split or corpus (launch.eval), compare losses across corpora (launch.compare --loss_to_loss),
and read a trace of its training steps (train.profile_steps, benchmarks.profile --run).

One tiny run is trained once for the module, through the trainer, with a profile window."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import profile
from launch import compare
from tests.test_bad_inputs import run_entry
from tests.test_train import tiny_config, train
from train import profiling, restore


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('tools') / 'run')
  config = tiny_config()
  config.train.profile_steps = '2:4'  # steps 3 and 4 of 8
  summary = train(config, workdir)
  return workdir, summary


def test_eval_restores_what_training_saved_and_scores_it_like_training(trained):
  """On the run's own held-out batches, launch.eval's loss IS the run's final eval loss: the
  same restore, the same eval step, the same batches."""
  workdir, summary = trained
  cfg = summary.config['eval']
  out = os.path.join(workdir, 'own.json')
  args = [
    f'--workdir={workdir}',
    f'--batches={cfg["batches"]}',
    f'--batch_size={cfg["batch_size"]}',
  ]
  r = run_entry('launch.eval', [*args, f'--out={out}'])
  assert r.code in (0, None), r.stderr
  got = json.loads(open(out).read())
  assert got['step'] == 8 and got['label'] == 'shakespeare_validation'
  assert got['eval_loss'] == pytest.approx(summary.final_eval_loss, rel=1e-6)
  assert got['eval_bpb'] == pytest.approx(summary.final_eval_bpb, rel=1e-6)
  # Another split: other text, another loss, its own bytes per token; default path.
  r = run_entry('launch.eval', [*args, '--data.eval_split=train', '--label=tr'])
  assert r.code in (0, None), r.stderr
  train_split = json.loads(open(os.path.join(workdir, 'eval_tr.json')).read())
  assert train_split['data']['eval_split'] == 'train'
  assert train_split['eval_loss'] != got['eval_loss']


def test_greedy_sample_is_the_restored_models_argmax_continuation(trained):
  workdir, _ = trained
  r = run_entry('launch.sample', [f'--workdir={workdir}', '--prompt=ROMEO:', '--max_tokens=12',
                                  '--temperature=0'])  # fmt: skip
  assert r.code in (0, None), r.stderr
  assert r.stdout.startswith('ROMEO:')
  t = restore.load(workdir)
  ids = list(t.tokenizer.encode(b'ROMEO:'))
  for _ in range(12):  # no cache: the whole sequence each time
    ids.append(int(jnp.argmax(t.model(jnp.asarray([ids]))[0, -1])))
  want = b'ROMEO:' + t.tokenizer.decode(ids[6:])
  assert r.stdout == want.decode('utf-8', 'replace') + '\n'


def test_profile_steps_trace_is_summarized_by_benchmarks_profile(trained):
  workdir, _ = trained
  report = profile.report_run(workdir, top=5)
  assert 'steps 3..4 of training' in report and 'traced 2 steps' in report
  matmul = next(line for line in report.splitlines() if line.startswith('| matmul |'))
  assert float(matmul.split('|')[2]) > 0  # the step's matmuls were traced and classified
  summary = json.loads(open(os.path.join(workdir, 'tb/plugins/profile/train_step.json')).read())
  assert summary['steps'] == 2 and summary['first'] == 3


@pytest.mark.parametrize(
  'spec,want',
  [('', None), ('3', (1, 4)), ('10:13', (10, 13)), (' 0:1 ', (0, 1)), ('0:20', (0, 20))],
)
def test_profile_window(spec, want):
  assert profiling.window(spec, 20) == want


@pytest.mark.parametrize('spec', ['x', '5:2', '3:3', '1:21', '20', '-1:3', '1:2:3'])
def test_profile_window_refuses(spec):
  with pytest.raises(ValueError, match='train.profile_steps'):
    profiling.window(spec, 20)


def test_loss_to_loss_recovers_the_exponent(tmp_path):
  """Runs whose loss on Y is exactly 1.3 * L_X ** 0.8: kappa = 0.8, in a narrow interval."""
  losses = [2.0, 2.4, 2.9, 3.3, 3.8]
  for i, lx in enumerate(losses):
    run = tmp_path / 'sweep' / 'runs' / f'r{i}'
    run.mkdir(parents=True)
    for label, loss in (('a', lx), ('b', 1.3 * lx**0.8)):
      (run / f'eval_{label}.json').write_text(json.dumps({'eval_loss': loss}))
  out = str(tmp_path / 'out' / 'l2l.png')
  lines = []
  assert compare.loss_to_loss([str(tmp_path / 'sweep')], ['a', 'b'], out, 50, lines.append) == 0
  got = json.loads(open(str(tmp_path / 'out' / 'l2l.json')).read())
  assert got['kappa'] == pytest.approx(0.8, abs=1e-9)
  assert got['kappa_95'][0] == pytest.approx(0.8, abs=1e-6) and len(got['runs']) == 5
  assert os.path.getsize(out) > 0 and 'kappa 95%' in lines[0]
  assert np.isclose(np.exp(got['log_c']), 1.3)
