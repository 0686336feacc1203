"""A trained model from a run directory, for the tools that use one (launch.sample, launch.eval,
launch.attention): the run's config, its tokenizer, the Transformer with the newest readable
checkpoint's parameters, on one device.

The parameters are restored by checkpoint.restore_trainer_state, the function training resumes
through, onto the same trainer (train/step.make_trainer) training builds: a tool reads exactly
what training would resume from, and a damaged newest checkpoint is skipped the same way.
"""

import dataclasses

from core import rundir


@dataclasses.dataclass
class Trained:
  config: object  # the run's ConfigDict (config.json)
  model: object  # models.transformer.Transformer with the restored parameters
  tokenizer: object
  step: int
  trainer: object  # train/step.Trainer on one device: its eval_step is training's
  params: dict  # the restored parameters (the state's 'params')


def read_config(workdir: str):
  """The run's config.json as a ConfigDict; FileNotFoundError (one line) if it is not a run."""
  import ml_collections

  recorded = rundir.RunDir(workdir).read_config()  # local or gs://
  if recorded is None:
    raise FileNotFoundError(f'{workdir} is not a training run (no {rundir.CONFIG})')
  return ml_collections.ConfigDict(recorded)


def check_restorable(workdir: str) -> None:
  """Raises FileNotFoundError (one line) unless `workdir` holds a checkpoint."""
  from train import checkpoint

  if not checkpoint.existing_steps(workdir):
    raise FileNotFoundError(f'{workdir} has no checkpoint yet; train it first')


def load(workdir: str, config=None) -> Trained:
  """The newest readable checkpoint of a run (`config`: its read_config, if already read)."""
  import jax
  from flax import nnx

  from data.tokenizer import load_tokenizer
  from models.shapes import ModelConfig
  from train import checkpoint, sharding
  from train.step import make_trainer

  config = read_config(workdir) if config is None else config
  check_restorable(workdir)
  tokenizer = load_tokenizer(config.data)
  model_cfg = ModelConfig.from_config(config.model, vocab_size=tokenizer.vocab_size)
  mesh = sharding.make_mesh({'data': 1}, jax.devices()[:1])
  trainer = make_trainer(config, model_cfg, mesh)
  mngr = checkpoint.manager(workdir, config.checkpoint)
  try:
    step, state, _ = checkpoint.restore_trainer_state(mngr, trainer)
  finally:
    mngr.close()
  params = state['params']
  return Trained(config, nnx.merge(trainer.graphdef, params), tokenizer, step, trainer, params)
