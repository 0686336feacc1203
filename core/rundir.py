"""The run folder and the sweep folder: every file name, the summary's fields, and when a run is
done, written once here. Trainer, sweep runner, SLURM arrays, analysis and reports use them.

A run folder (`RunDir`), local or gs://:
  config.json     the resolved config, written by the trainer before its first step
  metrics.jsonl   one JSON record a line: train means every log_every steps, evaluations
  tb/             TensorBoard events; profiler traces under tb/plugins/profile/ with the
                  traced step's record train_step.json and its HLO (train/profiling.py)
  eval_<label>.json   an evaluation by launch.eval on another split or corpus
  checkpoints/    Orbax steps (train/checkpoint.py)
  summary.json    a `Summary`, written last, when the run reaches train.steps
  log.txt         the sweep runner's log of the trainer process (log.<host>.txt on gs://)
  verbose_log.txt the trainer's own log at every level (verbose_log.<process>.txt: others)
A run is done exactly when its summary.json exists.

A sweep folder (`SweepDir`):
  sweep.json      the expanded sweep: [{'name', 'overrides', 'config', 'sweep'}]
  status.json     the runner's record of each run: {'updated', 'runs': {name: {...}}}
  runs/<name>/    one run folder per run
  stale/<name>-<time>/   runs set aside because their recorded config changed
"""

import dataclasses
import json
import posixpath

from core import files

CONFIG, METRICS, SUMMARY, LOG = 'config.json', 'metrics.jsonl', 'summary.json', 'log.txt'
CHECKPOINTS, TENSORBOARD = 'checkpoints', 'tb'
SWEEP, STATUS, RUNS, STALE = 'sweep.json', 'status.json', 'runs', 'stale'


@dataclasses.dataclass(frozen=True)
class Summary:
  """What a finished run reports (summary.json). Fields a reader needs may be missing from a
  summary written by hand or by an older trainer: they read as None."""

  n_params: int | None = None  # every parameter
  n_params_embed: int | None = None  # token (+ position, + untied unembedding) tables
  n_params_nonembed: int | None = None  # the N of Kaplan et al.
  flops_per_token: float | None = None  # training FLOPs per token (models/shapes.py, PaLM)
  final_step: int | None = None
  tokens_seen: int | None = None
  final_train_loss: float | None = None  # mean of the last log window (None: not finite)
  final_eval_loss: float | None = None  # nats per token on the fixed eval batches
  final_eval_loss_sem: float | None = None  # standard error of that mean over sequences
  final_eval_bpb: float | None = None  # bits per UTF-8 byte
  wall_time_s: float | None = None  # this invocation, start to summary
  compile_time_s: float | None = None
  peak_flops: float | None = None  # per device, for MFU
  peak_flops_source: str | None = None
  config: dict = dataclasses.field(default_factory=dict)  # the resolved config

  @classmethod
  def from_dict(cls, d: dict, required: tuple[str, ...] = ()) -> 'Summary':
    """Unknown keys are ignored; a key of `required` that is missing raises KeyError(key)."""
    for key in required:
      if key not in d:
        raise KeyError(key)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @property
  def tags(self) -> dict:
    return dict(self.config.get('tags', {}))


@dataclasses.dataclass(frozen=True)
class RunDir:
  """One run's folder (local or gs://); nothing is touched until a method is called."""

  path: str

  def file(self, name: str) -> str:
    return files.join(self.path, name)

  @property
  def config_path(self) -> str:
    return self.file(CONFIG)

  @property
  def metrics_path(self) -> str:
    return self.file(METRICS)

  @property
  def summary_path(self) -> str:
    return self.file(SUMMARY)

  @property
  def log_path(self) -> str:
    return self.file(LOG)

  def host_log_path(self, host: str) -> str:
    """Where a remote run's log is copied when the process ends (gs:// cannot be appended)."""
    return self.file(f'log.{host}.txt')

  def verbose_log_path(self, process: int = 0) -> str:
    return self.file(f'verbose_log{f".{process}" if process else ""}.txt')

  @property
  def tensorboard(self) -> str:
    return self.file(TENSORBOARD)

  @property
  def profile(self) -> str:
    """Where TensorBoard's profile plugin looks, and where the traced step is described."""
    return files.join(self.tensorboard, 'plugins', 'profile')

  def eval_path(self, label: str) -> str:
    return self.file(f'eval_{label}.json')

  @property
  def checkpoints(self) -> str:
    """Absolute: Orbax wants an absolute path (a gs:// one is left as it is)."""
    return files.join(files.absolute(self.path), CHECKPOINTS)

  def done(self) -> bool:
    return files.exists(self.summary_path)

  def write_config(self, config: dict) -> None:
    files.makedirs(self.path)
    files.write_text(self.config_path, json.dumps(config, indent=2))

  def read_config(self) -> dict | None:
    """The recorded config, None if there is none; ValueError if it is not JSON."""
    if not files.exists(self.config_path):
      return None
    return json.loads(files.read_text(self.config_path))

  def write_summary(self, summary: Summary) -> None:
    files.write_text(self.summary_path, json.dumps(summary.to_dict(), indent=2))

  def read_summary(self, required: tuple[str, ...] = ()) -> Summary | None:
    """The summary, None if the run is not done. ValueError or KeyError if it is unreadable or
    lacks a `required` key (the caller names the file: `summary_path`)."""
    if not self.done():
      return None
    d = json.loads(files.read_text(self.summary_path))
    if not isinstance(d, dict):
      raise ValueError(f'not a JSON object but {type(d).__name__}')
    return Summary.from_dict(d, required)

  def sibling(self, name: str) -> 'RunDir':
    """Another run of the same sweep (a branch's parent): runs/<name> beside this one."""
    parent = posixpath.dirname(self.path.rstrip('/'))
    return RunDir(files.join(parent, name) if parent else name)


@dataclasses.dataclass(frozen=True)
class SweepDir:
  """A sweep's folder (local or gs://)."""

  path: str

  def run(self, name: str) -> RunDir:
    return RunDir(files.join(self.path, RUNS, name))

  def run_names(self) -> list[str]:
    """Every run folder there, done or not, sorted."""
    return files.listdir(files.join(self.path, RUNS))

  @property
  def sweep_path(self) -> str:
    return files.join(self.path, SWEEP)

  @property
  def status_path(self) -> str:
    return files.join(self.path, STATUS)

  def stale_path(self, name: str, stamp: str) -> str:
    return files.join(self.path, STALE, f'{name}-{stamp}')

  def write_sweep(self, records: list[dict]) -> None:
    files.makedirs(self.path)
    files.write_text(self.sweep_path, json.dumps(records, indent=2))
