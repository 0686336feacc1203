"""Corpora and tokenizers in a bucket: Parquet and JSONL read from gs://, tokenizers trained
into and loaded from gs:// (never a local folder named 'gs:'), against the GCS emulator of
tests/test_gcs.py. The child process sees the bucket the way a real run does (gcsfs)."""

import json
import subprocess
import sys
import textwrap

import pytest

from tests.test_gcs import BUCKET, gcs  # noqa: F401  (the emulator fixture)

pytestmark = pytest.mark.slow

CHILD = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import pyarrow as pa, pyarrow.parquet as pq
    from etils import epath
    from experiments.configs import default
    from data import sources
    from data.pipeline import DataPipeline
    from data.tokenizer import load_tokenizer, train_bpe_json, train_sentencepiece

    bucket, local = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    words = ['alpha', 'beta', 'Grüße', 'café', '東京', 'zeta', 'eta']
    docs = [' '.join(rng.choice(words, int(rng.integers(30, 300)))) for _ in range(60)]
    os.makedirs(local)
    for split, part in (('train', docs[:48]), ('test', docs[48:])):
      for k in range(2):
        rows = part[k::2]
        pq.write_table(pa.table({'text': rows}), f'{local}/{split}-{k}.parquet', row_group_size=5)
        with open(f'{local}/{split}-{k}.jsonl', 'w') as f:
          f.write(''.join(json.dumps({'text': d}) + '\\n' for d in rows))
    for name in os.listdir(local):
      (epath.Path(bucket) / 'corpus' / name).write_bytes(open(f'{local}/{name}', 'rb').read())
    out = {}
    for fmt in ('parquet', 'jsonl'):
      batches = []
      for where in (bucket + '/corpus', local):
        cfg = default.get_config().data
        cfg.update(name=fmt, text_glob=f'{where}/*.{fmt}', eval_split='test')
        it = DataPipeline(cfg, 4, 32, 0).train_iterator()
        batches.append([next(it)['inputs'].tolist() for _ in range(3)])
      out[fmt] = batches[0] == batches[1]
    # Tokenizers: trained into the bucket, loaded from it.
    src = sources.open_split(cfg, 'train')
    texts = [bytes(src[i]['text']) for i in range(len(src))]
    paths = [
      train_bpe_json(texts, 300, bucket + '/tok/bpe.json'),
      train_sentencepiece(texts, 300, bucket + '/tok/spm'),
    ]
    for path in paths:
      cfg.tokenizer = path
      tok = load_tokenizer(cfg)
      out[path] = tok.decode(tok.encode(texts[0])) == texts[0]
    print('RESULT' + json.dumps(out))
""")


def test_corpora_and_tokenizers_in_a_bucket(gcs, tmp_path):  # noqa: F811
  cwd = tmp_path / 'cwd'  # nothing may appear here: a gs:// path must never turn local
  cwd.mkdir()
  r = subprocess.run(
    [sys.executable, '-c', CHILD, f'gs://{BUCKET}', str(tmp_path / 'local')],
    cwd=cwd,
    env=gcs.env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.split('RESULT')[1])
  assert out == {
    'parquet': True,
    'jsonl': True,
    f'gs://{BUCKET}/tok/bpe.json': True,
    f'gs://{BUCKET}/tok/spm.model': True,
  }
  assert gcs.exists('tok/bpe.json') and gcs.exists('tok/spm.model')
  assert list(cwd.iterdir()) == []
