"""Default config: a small byte-level GPT on the embedded Shakespeare corpus.

Sized so that the loss visibly falls within a few minutes on a 2-core CPU.
Every other config starts from this one and overrides what it changes.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # What is trained (models/transformer.py).
  c.model = m = ml_collections.ConfigDict()
  m.vocab_size = 0  # 0: take it from the tokenizer. Set it, and a mismatch is an error.
  m.d_model = 128
  m.num_layers = 4
  m.num_heads = 4
  m.num_kv_heads = 0  # 0: same as num_heads (MHA); 1: MQA; between: GQA.
  m.head_dim = 0  # 0: d_model // num_heads.
  m.d_ff = 0  # 0: 4 * d_model (swiglu: 8/3 * d_model, rounded up to a multiple of 8).
  m.max_seq_len = 256  # size of the learned position table.
  m.pos_emb = 'learned'  # 'learned' (GPT-3) | 'rope'.
  m.tie_embeddings = True
  m.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16'.
  m.param_dtype = 'float32'
  # 'auto': cuDNN flash attention on GPUs, Pallas splash attention on TPUs where they apply,
  # else XLA (says once why). 'reference' (einsums) | 'xla' | 'cudnn' | 'splash': insist.
  m.attention_impl = 'auto'
  m.remat = 'none'  # 'none' | 'full' | 'dots'.
  m.scan_layers = False
  m.init_std = 0.02
  # Block options (defaults: GPT-3's block; experiments/configs/modern.py sets all four).
  m.norm = 'layernorm'  # 'layernorm' | 'rmsnorm' (every norm: blocks, final, qk-norm).
  m.mlp = 'gelu'  # 'gelu' (2 matrices) | 'swiglu' ((silu(x W1) * x W3) W2, 3 matrices).
  m.use_bias = True  # False: no bias anywhere (projections, MLP, LayerNorms).
  m.qk_norm = False  # True: queries and keys normalized per head before the dot product.
  # 'sp' (standard: init_std everywhere, one lr) | 'mup' (Yang et al. 2022, models/mup.py):
  # hyperparameters tuned at width mup_base_width transfer to every width.
  m.parametrization = 'sp'
  m.mup_base_width = 128

  # What it reads (data/).
  c.data = d = ml_collections.ConfigDict()
  # 'shakespeare' | 'text_folder' | 'parquet' | 'jsonl' | any prepared TFDS name ('lm1b', ...).
  d.name = 'shakespeare'
  d.data_dir = ''  # '' -> ~/.cache/scaling_lm/tfds (env SCALING_LM_DATA overrides).
  d.text_glob = ''  # for 'text_folder', 'parquet', 'jsonl': local or gs:// glob of files.
  d.text_key = 'text'
  d.train_split = 'train'
  d.eval_split = 'validation'
  d.tokenizer = 'bytes'  # 'bytes' | a SentencePiece .model | a tokenizers .json (local or gs://).
  d.seq_len = 128
  d.segment_ids = False  # True: attention stays within a document.
  d.shuffle = True

  # How it trains (train/).
  c.train = t = ml_collections.ConfigDict()
  t.steps = 300
  t.global_batch = 16
  t.grad_accum = 1
  t.lr = 3e-3
  t.warmup_steps = 30
  t.optimizer = 'adamw'  # 'adamw' | 'adafactor' | 'lion' (train/optim.py).
  t.schedule = 'cosine'  # 'cosine' | 'constant' | 'wsd'.
  t.min_lr_ratio = 0.1
  t.decay_fraction = 0.2  # wsd: fraction of steps spent decaying.
  t.weight_decay = 0.1
  t.b1 = 0.9
  t.b2 = 0.95
  t.eps = 1e-8
  t.grad_clip = 1.0
  t.z_loss = 0.0
  # Divergence guard: the run stops (exit code 65) after this many consecutive steps with a
  # non-finite loss or gradient norm; a checkpoint of non-finite parameters is never written.
  t.nan_patience = 1
  t.skip_nonfinite = False  # True: such a step leaves parameters and optimizer state unchanged.
  # True: XLA_FLAGS --xla_gpu_deterministic_ops=true (set before the backend starts), so a
  # resumed GPU run equals an uninterrupted one bit for bit. Harmless on CPU/TPU. Its speed cost
  # on GPU is not measured here.
  t.deterministic = False
  # A jax.profiler trace into WORKDIR/tb/plugins/profile/ of the steps after START up to STOP
  # ('START:STOP', numbered as in metrics.jsonl), or of N steps after the first, compiling,
  # one ('N' = '1:N+1'). '': no trace. `python -m benchmarks.profile --run=WORKDIR` reads it.
  t.profile_steps = ''
  # Branch from another run's checkpoint (e.g. a WSD cooldown from a constant-lr run): the
  # run starts at checkpoint step init_step of the run directory init_from (parameters,
  # optimizer state and data-iterator state), then follows its own schedule. '' : from scratch.
  t.init_from = ''
  t.init_step = 0

  c.eval = e = ml_collections.ConfigDict()
  e.every = 100
  e.batches = 8  # fixed batches of the held-out split, the same at every evaluation.
  e.batch_size = 16

  c.checkpoint = k = ml_collections.ConfigDict()
  k.every = 100
  k.max_to_keep = 2
  k.async_save = True

  # Mesh axes; -1 takes the devices that are left. Product must equal the device count.
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1})
  # Logical parameter/activation axis -> mesh axis (or None: replicated).
  c.sharding_rules = ml_collections.ConfigDict(
    {
      'batch': ('data', 'fsdp'),
      'vocab': 'tensor',
      'embed': 'fsdp',
      'heads': 'tensor',
      'kv_heads': 'tensor',
      'head_dim': None,
      'mlp': 'tensor',
      'layers': None,
      # Activations (models/layers.py): 'batch' above, then the residual stream's length and
      # width, heads, MLP hidden, logits' vocabulary. Megatron-style tensor parallelism.
      'act_length': None,  # 'tensor': sequence parallelism between blocks
      'act_embed': None,
      'act_heads': 'tensor',
      'act_kv_heads': 'tensor',
      'act_mlp': 'tensor',
      'act_vocab': 'tensor',
    }
  )

  # Free-form labels that sweeps set and analysis reads (e.g. the IsoFLOP budget).
  # size, lr, seed: the model's name, its peak lr and seed in per-size lr grids with seeds
  # (experiments/sweeps/common.py:grid_runs).
  c.tags = ml_collections.ConfigDict(
    {'budget_flops': 0.0, 'group': '', 'size': '', 'lr': 0.0, 'seed': 0}
  )

  c.log_every = 10
  c.peak_flops = 0.0  # 0: look up the device (CPU: measured once per run).
  return c
