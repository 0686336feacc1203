"""The data pipeline: host-count invariance, exact resume, packing without loss, bad input."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from data import sources, text_corpus
from data.pipeline import DataPipeline
from data.tokenizer import ByteTokenizer, load_tokenizer, train_sentencepiece
from experiments.configs import default
from tests.cluster import REPO


def data_cfg(**overrides):
  d = default.get_config().data
  d.update(overrides)
  return d


def pipe(batch=8, seq=64, seed=0, index=0, count=1, **overrides):
  return DataPipeline(data_cfg(**overrides), batch, seq, seed, index, count)


def test_batches_do_not_depend_on_the_process_count():
  one = pipe(batch=8).train_iterator()
  two = [pipe(batch=8, index=i, count=2).train_iterator() for i in range(2)]
  four = [pipe(batch=8, index=i, count=4).train_iterator() for i in range(4)]
  for _ in range(30):
    g = next(one)
    for parts in (two, four):
      got = [next(it) for it in parts]
      for key in g:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in got]), g[key])
  # States of 2 processes, stacked, restore a 1-process iterator exactly.
  state = np.concatenate([it.get_state() for it in two])
  np.testing.assert_array_equal(state, one.get_state())
  resumed = pipe(batch=8).train_iterator()
  resumed.set_state(state)
  for _ in range(5):
    np.testing.assert_array_equal(next(resumed)['inputs'], next(one)['inputs'])


def row_stream(batches, row):
  """A row's token stream: consecutive chunks share one token."""
  chunks = [np.append(b['inputs'][row], b['targets'][row, -1]) for b in batches]
  return np.concatenate([chunks[0]] + [c[1:] for c in chunks[1:]])


def test_packing_loses_nothing_and_restore_resumes_mid_document():
  p = pipe(batch=4, seq=32)
  it = p.train_iterator()
  straight = [next(it) for _ in range(300)]
  it2 = p.train_iterator()
  first = [next(it2) for _ in range(137)]  # stops in the middle of a document
  assert (it2.get_state()[:, 2] > 0).all()
  it3 = p.train_iterator()
  it3.set_state(json.loads(json.dumps(it2.get_state().tolist())))  # survives serialization
  rest = [next(it3) for _ in range(163)]
  for a, b in zip(straight, first + rest, strict=True):
    np.testing.assert_array_equal(a['targets'], b['targets'])
  # Row 1's tokens are exactly its documents' tokens, in order, separators included.
  units, order = p._train, it._order(0, 1)
  expected = np.concatenate([units.tokens(int(u)) for u in order])
  got = row_stream(straight, 1)
  n = min(len(expected), len(got))
  assert n > 5000
  np.testing.assert_array_equal(got[:n], expected[:n])


def test_eval_batches_do_not_depend_on_the_process_count():
  """What the 4-process test checks end to end, in a second: each process's eval rows, stacked,
  are the 1-process eval batches (with a training batch of another size beside them). 20
  batches of 512 tokens: every row reads past its first packing unit (about 6,500 bytes)."""
  one = pipe(batch=32, seq=512).eval_batches(20, 16)
  for count in (2, 4):
    parts = [pipe(32, 512, index=i, count=count).eval_batches(20, 16) for i in range(count)]
    for b, batch in enumerate(one):
      for key in batch:
        stacked = np.concatenate([p[b][key] for p in parts])
        np.testing.assert_array_equal(stacked, batch[key], err_msg=f'{count} processes, {key}')


def test_streams_across_three_epochs_keep_documents_separators_and_order(tmp_path):
  """A corpus of 16 short documents read for more than 3 epochs by 2 rows, checked against
  the documents themselves: every separator ends a whole document, every document is read
  once per epoch by exactly one row, each epoch in its own order (the permutation the module
  docstring specifies), and a restore inside the second epoch continues exactly."""
  folder = tmp_path / 'texts'
  folder.mkdir()
  rng = np.random.default_rng(1)
  for i in range(16):
    filler = bytes(
      rng.integers(ord('a'), ord('z') + 1, int(rng.integers(40, 160))).astype(np.uint8)
    )
    (folder / f'doc{i:02d}.txt').write_bytes(f'<doc{i:02d}>'.encode() + filler)
  cfg = data_cfg(name='text_folder', text_glob=str(folder / '*.txt'), data_dir=str(tmp_path / 'd'))
  p = DataPipeline(cfg, 2, 16, 5)
  train = sources.open_split(cfg, 'train')
  texts = [bytes(train[i]['text']) for i in range(len(train))]
  n = len(texts)
  assert n >= 8 and len(p._train) == n  # whole documents are the packing units
  it = p.train_iterator()
  batches = [next(it) for _ in range(int(3.5 * sum(map(len, texts)) / 2 / 16))]
  assert it.get_state()[:, 0].min() >= 3  # every row is in its fourth epoch
  eos = ByteTokenizer.eos_id
  read = []  # per row: the documents it read, in order
  for row in range(2):
    stream = row_stream(batches, row)
    pieces = np.split(stream, np.nonzero(stream == eos)[0] + 1)[:-1]  # the last is unfinished
    assert all(piece[-1] == eos and eos not in piece[:-1] for piece in pieces)
    docs = [bytes(piece[:-1].astype(np.uint8)) for piece in pieces]
    assert all(d in texts for d in docs)  # whole documents, nothing cut or joined
    read.append([texts.index(d) for d in docs])
  orders = []
  for epoch in range(3):
    perm = np.random.default_rng([5, epoch]).permutation(n)
    shares = [list(perm[row::2]) for row in range(2)]
    for row, share in enumerate(shares):
      got = read[row][epoch * len(share) : (epoch + 1) * len(share)]
      assert got == share, (epoch, row)
    assert sorted(shares[0] + shares[1]) == list(range(n))  # each document once per epoch
    orders.append(perm.tolist())
  assert orders[0] != orders[1] != orders[2]
  # Restore inside the second epoch: the rest of the stream is the same.
  k = len(batches) // 2
  it2 = p.train_iterator()
  for _ in range(k):
    next(it2)
  assert (it2.get_state()[:, 0] >= 1).any()
  it3 = p.train_iterator()
  it3.set_state(it2.get_state())
  for b in batches[k:]:
    np.testing.assert_array_equal(next(it3)['targets'], b['targets'])


def test_segment_ids_follow_document_separators():
  """Segment ids start at 1 and step up right after each separator, in batches that hold some."""
  # 32 rows: 128 packing units (pieces of plays), so some rows reach a play's end early.
  it = pipe(batch=32, seq=256).train_iterator()
  eos, separators = ByteTokenizer.eos_id, 0
  for _ in range(1000):
    b = next(it)
    for row in range(32):
      seg, x = b['segment_ids'][row], b['inputs'][row]
      assert seg[0] == 1 and (np.diff(seg) >= 0).all()
      changes = np.nonzero(np.diff(seg))[0]
      np.testing.assert_array_equal(changes, np.nonzero(x[:-1] == eos)[0])
      np.testing.assert_array_equal(np.diff(seg)[changes], 1)
      separators += len(changes)
    if separators >= 5:
      break
  assert separators >= 5  # the property was checked on real document boundaries


def test_eval_batches_are_fixed_and_held_out():
  p = pipe(batch=8)
  a, b = p.eval_batches(3, 8), pipe(batch=8, seed=7).eval_batches(3, 8)
  for x, y in zip(a, b, strict=True):  # the same on every call and for any training seed
    np.testing.assert_array_equal(x['inputs'], y['inputs'])
  cfg = data_cfg()
  train = sources.open_split(cfg, 'train')
  val = sources.open_split(cfg, 'validation')
  names = lambda s: {s[i]['name'] for i in range(len(s))}  # noqa: E731
  assert names(train).isdisjoint(names(val)) and len(names(val)) >= 1
  # Every eval row's text is a passage of the validation split and not of the training split.
  text = lambda s: b'\x00'.join(bytes(s[i]['text']) for i in range(len(s)))  # noqa: E731
  val_text, train_text = text(val), text(train)
  eos = ByteTokenizer.eos_id
  for batch in a:
    for row in batch['inputs']:
      piece = max(np.split(row, np.nonzero(row == eos)[0]), key=len)
      piece = bytes(piece[piece != eos].astype(np.uint8))
      assert len(piece) >= 20 and piece in val_text and piece not in train_text
  # Bytes per token is measured: every byte is a token, separators are tokens without bytes.
  assert 0.99 < p.bytes_per_token < 1.0


NON_ASCII = 'Ærø — naïve façade, 日本語, ёж, 🎭 ∮ E⋅da = Q'.encode()


def test_byte_tokenizer_round_trips_any_bytes():
  tok = ByteTokenizer()
  for text in (NON_ASCII, bytes(range(256)), b''):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) == len(text) and (ids < tok.eos_id).all()


def test_text_folder_sentencepiece_and_prepared_dataset_by_name(tmp_path):
  folder = tmp_path / 'texts'
  folder.mkdir()
  rng = np.random.default_rng(0)
  words = ['alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta', 'theta']
  for i in range(12):
    text = '\n'.join(' '.join(rng.choice(words, 12)) for _ in range(200))
    (folder / f'doc{i:02d}.txt').write_text(text)
  data_dir = str(tmp_path / 'tfds')
  cfg = data_cfg(name='text_folder', text_glob=str(folder / '*.txt'), data_dir=data_dir)
  p = DataPipeline(cfg, 4, 32, 0)
  assert p.vocab_size == 257 and next(p.train_iterator())['inputs'].shape == (4, 32)
  # SentencePiece trained on the training split, stored beside the dataset.
  src = sources.open_split(cfg, 'train')
  path = train_sentencepiece(
    (src[i]['text'] for i in range(len(src))),
    300,
    os.path.join(sources.dataset_dir(cfg), 'spm'),
  )
  cfg.tokenizer = path
  tok = load_tokenizer(cfg)
  assert tok.vocab_size == 300  # 256 byte-fallback pieces + specials + merges
  for text in (b'alpha beta gamma', NON_ASCII):  # non-ASCII through the byte fallback
    assert tok.decode(tok.encode(text)) == text
  sp = DataPipeline(cfg, 4, 32, 0)
  assert sp.vocab_size == 300 and sp.bytes_per_token > 1.5  # subwords cover several bytes
  # Bits per byte need bytes per token: the held-out split's bytes over its tokens + separators.
  val = sources.open_split(cfg, 'validation')
  docs = [bytes(val[i]['text']) for i in range(len(val))]
  n_tokens = sum(len(tok._sp.encode(d.decode())) + 1 for d in docs)
  assert sp.bytes_per_token == pytest.approx(sum(map(len, docs)) / n_tokens, rel=1e-12)
  # The same prepared dataset opened as 'any TFDS dataset in data_dir', by name.
  builder = text_corpus.prepare('text_folder', str(folder / '*.txt'), data_dir)
  name = f'text_corpus/{builder.builder_config.name}'
  by_name = DataPipeline(data_cfg(name=name, data_dir=data_dir), 4, 32, 0)
  np.testing.assert_array_equal(
    next(by_name.train_iterator())['inputs'], next(p.train_iterator())['inputs']
  )


def test_bad_data_input_is_a_one_line_error(tmp_path):
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'a.txt').write_text('')
  (tmp_path / 'empty' / 'b.txt').write_text('')
  (tmp_path / 'binary').mkdir()
  for name in ('a.bin', 'b.bin', 'c.bin'):  # random bytes: a NUL within 8 KiB, near surely
    (tmp_path / 'binary' / name).write_bytes(np.random.default_rng(0).bytes(20000))
  (tmp_path / 'notjson').mkdir()
  for name in ('train.jsonl', 'validation.jsonl'):
    (tmp_path / 'notjson' / name).write_text('to be, or not to be\n')
  (tmp_path / 'tiny').mkdir()
  (tmp_path / 'tiny' / 'a.txt').write_text('to be')
  (tmp_path / 'tiny' / 'b.txt').write_text('or not')
  dd = str(tmp_path / 'tfds')
  fake = tmp_path / 'tfds' / 'oldset' / '1.0.0'
  fake.mkdir(parents=True)
  (fake / 'dataset_info.json').write_text(json.dumps({'name': 'oldset', 'fileFormat': 'tfrecord'}))

  def folder(name):
    return dict(name='text_folder', text_glob=str(tmp_path / name / '*.*'), data_dir=dd)

  cases = [
    (dict(name='text_folder', text_glob=''), 'needs data.text_glob'),
    (folder('none'), 'no text files'),
    (folder('empty'), 'holds no text'),
    (folder('binary'), 'is not text'),
    (dict(name='jsonl', text_glob=str(tmp_path / 'notjson' / '*')), 'is not JSON Lines'),
    (dict(name='parquet', text_glob=str(tmp_path / 'notjson' / '*')), 'not a readable Parquet'),
    (dict(name='parquet', text_glob=''), 'needs data.text_glob'),
    (folder('tiny'), 'fewer than one sequence'),
    (dict(name='lm1b', data_dir=dd), 'tfds build lm1b'),
    (dict(name='lm1b', data_dir=str(tmp_path / 'nowhere')), 'does not exist'),
    (dict(name='oldset', data_dir=dd), 'convert'),
    (dict(tokenizer=str(tmp_path / 'missing.model')), 'does not exist'),
    (dict(tokenizer='gpt2'), 'SentencePiece'),
  ]
  for overrides, message in cases:
    with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
      pipe(seq=64, **overrides)
    assert '\n' not in str(e.value), overrides
  with pytest.raises(ValueError, match='does not split over 3 processes'):
    pipe(batch=8, count=3)


CHILD = textwrap.dedent("""
    import sys, json
    import jax
    jax.config.update('jax_num_cpu_devices', 2)
    jax.distributed.initialize(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from experiments.configs import default
    from data.pipeline import DataPipeline
    cfg = default.get_config().data
    pipe = DataPipeline(cfg, 8, 32, 0, jax.process_index(), jax.process_count())
    mesh = Mesh(np.array(jax.devices()), ('data',))
    sh = NamedSharding(mesh, P('data'))
    it = pipe.train_iterator()
    out = []
    for _ in range(4):
      local = next(it)['inputs']
      g = jax.make_array_from_process_local_data(sh, local, (8, 32))
      out.append(np.asarray(multihost_utils.process_allgather(g, tiled=True)).tolist())
    if jax.process_index() == 0:
      print('RESULT' + json.dumps(out))
    jax.distributed.shutdown()
""")


@pytest.mark.slow
def test_two_real_processes_assemble_the_same_global_batches(tmp_path):
  script = tmp_path / 'child.py'
  script.write_text(CHILD)
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  for _ in range(3):
    # A port the OS gave and released can be taken again before the coordinator binds it:
    # then (and only then) start over on a new one.
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      port = s.getsockname()[1]
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cmd = [sys.executable, str(script), f'127.0.0.1:{port}', '2']
    procs = [subprocess.Popen([*cmd, str(i)], cwd=REPO, env=env, **pipes) for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    if not any('address already in use' in err.lower() for _, err in outs):
      break
  assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
  line = next(x for x in outs[0][0].splitlines() if x.startswith('RESULT'))
  got = np.array(json.loads(line[len('RESULT') :]))
  it = pipe(batch=8, seq=32).train_iterator()
  for step in range(4):
    np.testing.assert_array_equal(got[step], next(it)['inputs'])


# -- Parquet and JSONL corpora, tokenizers JSON files, real lm1b split names -------------------


def _corpus_docs(n: int, seed: int = 0) -> list[str]:
  """Documents of different lengths, non-ASCII included (several bytes per character)."""
  rng = np.random.default_rng(seed)
  words = ['alpha', 'beta', 'gamma', 'Grüße', 'naïve', 'café', '東京', 'δέλτα', 'zeta']
  return [' '.join(rng.choice(words, int(rng.integers(20, 400)))) for _ in range(n)]


def _write_parquet(path, docs, row_group_size):
  import pyarrow as pa
  import pyarrow.parquet as pq

  table = pa.table({'text': docs, 'id': list(range(len(docs)))})
  pq.write_table(table, path, row_group_size=row_group_size)


def _write_corpus(folder, fmt: str) -> dict[str, list[str]]:
  """train in three files (Parquet: several row groups each), test in one; returns the docs."""
  folder.mkdir(parents=True, exist_ok=True)
  docs = {'train': _corpus_docs(90, 1), 'test': _corpus_docs(12, 2)}
  pieces = {'train': [docs['train'][:25], docs['train'][25:60], docs['train'][60:]]}
  pieces['test'] = [docs['test']]
  for split, parts in pieces.items():
    for k, part in enumerate(parts):
      name = f'{split}-{k:05d}-of-{len(parts):05d}.{fmt}'
      if fmt == 'parquet':
        _write_parquet(folder / name, part, 7)
      else:
        lines = [json.dumps({'text': d, 'meta': i}) for i, d in enumerate(part)]
        (folder / name).write_text('\n'.join(lines[:3]) + '\n\n' + '\n'.join(lines[3:]) + '\n')
  return docs


@pytest.mark.parametrize('fmt', ['parquet', 'jsonl'])
def test_parquet_and_jsonl_splits_documents_resume_and_hosts(tmp_path, fmt):
  docs = _write_corpus(tmp_path / 'corpus', fmt)
  cfg = dict(name=fmt, text_glob=str(tmp_path / 'corpus' / f'*.{fmt}'), eval_split='test')
  # Splits come from the files present; every document, in file order, exactly once.
  for split in ('train', 'test'):
    src = sources.open_split(data_cfg(**cfg), split)
    assert [src[i]['text'].decode() for i in range(len(src))] == docs[split]
  with pytest.raises(ValueError, match=r"split 'validation' not in .*\['test', 'train'\]"):
    pipe(seq=32, **{**cfg, 'eval_split': 'validation'})
  # Exact resume: restore the state after 5 batches into a fresh pipeline.
  a = pipe(batch=4, seq=32, **cfg).train_iterator()
  for _ in range(5):
    next(a)
  saved = a.get_state()
  b = pipe(batch=4, seq=32, **cfg).train_iterator()
  b.set_state(saved)
  for _ in range(6):
    np.testing.assert_array_equal(next(a)['inputs'], next(b)['inputs'])
  # Two hosts: each its own rows of the same global batch, from disjoint documents.
  whole = pipe(batch=4, seq=32, **cfg).train_iterator()
  hosts = [pipe(batch=4, seq=32, index=i, count=2, **cfg) for i in range(2)]
  for h in hosts:  # documents are read lazily from the source: record which
    h._train.source = _Recorder(h._train.source)
  its = [h.train_iterator() for h in hosts]
  for _ in range(3):
    g = next(whole)['inputs']
    np.testing.assert_array_equal(np.concatenate([next(it)['inputs'] for it in its]), g)
  read = [h._train.source.read for h in hosts]
  assert read[0] and read[1] and not read[0] & read[1]


class _Recorder:
  def __init__(self, source):
    self.source, self.read = source, set()

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    self.read.add(int(i))
    return self.source[i]


def test_bpe_json_tokenizer_round_trips_and_bits_per_byte_count_utf8_bytes(tmp_path):
  """A GPT-2-style byte-level BPE trained here on the embedded corpus (nothing downloaded); bits
  per byte divide by the UTF-8 bytes of the held-out text for every tokenizer."""
  from data.tokenizer import JsonTokenizer, train_bpe_json

  train = sources.open_split(data_cfg(), 'train')
  texts = [bytes(train[i]['text']) for i in range(4)]
  path = train_bpe_json(texts, 512, str(tmp_path / 'tok' / 'bpe.json'))
  tok = load_tokenizer(data_cfg(tokenizer=path))
  assert isinstance(tok, JsonTokenizer) and tok.vocab_size == 512
  text = 'Grüße aus 東京: naïve café, δέλτα 😀'.encode()
  ids = tok.encode(text)
  assert tok.eos_id not in ids and tok.decode(ids) == text
  # A corpus of non-ASCII documents (2-4 bytes per character, runs of spaces that SentencePiece
  # normalizes away), measured by hand: bytes of the text over its tokens and separators.
  docs = [d.replace(' café', '   café') for d in _corpus_docs(40, 3)]
  (tmp_path / 'c').mkdir()
  for i, d in enumerate(docs):
    (tmp_path / 'c' / f'{"test" if i < 10 else "train"}-{i:03d}.jsonl').write_text(
      json.dumps({'text': d}) + '\n'
    )
  cfg = dict(name='jsonl', text_glob=str(tmp_path / 'c' / '*.jsonl'), eval_split='test')
  held_out = [d.encode() for d in docs[:10]]
  n_bytes = sum(map(len, held_out))
  assert n_bytes > 1.2 * sum(map(len, docs[:10]))  # bytes, well above characters
  spm_path = train_sentencepiece(texts, 400, str(tmp_path / 'tok' / 'spm'))
  for name in ('bytes', path, spm_path):
    tok = load_tokenizer(data_cfg(tokenizer=name))
    p = pipe(batch=4, seq=16, tokenizer=name, **cfg)
    n_tokens = sum(len(tok.encode(d)) + 1 for d in held_out)
    assert p.bytes_per_token == pytest.approx(n_bytes / n_tokens, rel=1e-12), name


def test_tokenizer_files_that_are_not_tokenizers_are_one_line_errors(tmp_path):
  (tmp_path / 'junk.json').write_text('{"not": "a tokenizer"}')
  with pytest.raises(ValueError, match='not a tokenizers JSON file') as e:
    load_tokenizer(data_cfg(tokenizer=str(tmp_path / 'junk.json')))
  assert '\n' not in str(e.value)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    load_tokenizer(data_cfg(tokenizer=str(tmp_path / 'none.json')))


def test_real_lm1b_split_names_and_the_accelerator_sweeps(tmp_path, monkeypatch):
  """lm1b has only train and test: the accelerator sweeps evaluate on test, and a missing
  split is one line that names the splits there are."""
  from experiments import sweep_spec
  from tests import fake_lm1b

  fake_lm1b.build(str(tmp_path / 'tfds'), docs_per_split=6, words_per_doc=400)
  cfg = dict(name='lm1b', data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(ValueError, match=r"split 'validation' not in lm1b .*\['train', 'test'\]"):
    pipe(batch=4, seq=16, **cfg)
  defaults = default.get_config().data
  for accel in ('gpu', 'v5p'):
    monkeypatch.setenv('ACCEL', accel)
    for stem in ('accel_ladder', 'accel_isoflop'):
      for name in [m for m in sys.modules if m.startswith('experiments.sweeps.accel')]:
        monkeypatch.delitem(sys.modules, name)
      path = os.path.join(REPO, 'experiments', 'sweeps', f'{stem}.py')
      splits = {
        (
          r.overrides.get('data.train_split', defaults.train_split),
          r.overrides.get('data.eval_split', defaults.eval_split),
        )
        for r in sweep_spec.expand(path).runs
      }
      assert splits == {('train', 'test')}, (accel, stem, splits)
  p = pipe(batch=4, seq=16, **cfg, eval_split='test')
  assert next(p.train_iterator())['inputs'].shape == (4, 16) and p.eval_batches(1, 4)


def test_tokenizer_command_trains_a_bpe_json_beside_a_jsonl_corpus(tmp_path):
  docs = _write_corpus(tmp_path / 'corpus', 'jsonl')
  glob_ = str(tmp_path / 'corpus' / '*.jsonl')
  r = subprocess.run(
    [
      sys.executable,
      '-m',
      'data.tokenizer',
      '--kind=bpe_json',
      '--vocab_size=300',
      '--config.data.name=jsonl',
      f'--config.data.text_glob={glob_}',
      f'--config.data.data_dir={tmp_path / "tfds"}',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    env={**os.environ, 'PYTHONPATH': REPO},
  )
  assert r.returncode == 0, r.stderr[-2000:]
  path = r.stdout.strip()
  assert path.startswith(str(tmp_path / 'tfds' / 'jsonl_')) and path.endswith('bpe_300.json')
  tok = load_tokenizer(data_cfg(tokenizer=path))
  text = docs['test'][0].encode()
  assert tok.vocab_size == 300 and tok.decode(tok.encode(text)) == text


def test_split_of_a_file_comes_from_its_name_or_folder():
  from data.files import split_of

  assert split_of('gs://b/c4/train-00000-of-00008.parquet') == 'train'
  assert split_of('/d/test.jsonl') == 'test'
  assert split_of('/d/en/c4-validation.00003-of-00008.jsonl') == 'validation'
  assert split_of('/d/wiki_dev_2.jsonl') == 'dev'
  assert split_of('/d/heldout-0.parquet') == 'heldout'
  assert split_of('/d/train/part-0.parquet') == 'train'
  assert split_of('/d/test/0001.jsonl') == 'test'
