"""Every pra_jax config field, with its default and allowed values; size files override a few.

Fields marked [ours] are choices the paper does not pin down (see the README's method notes).
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                       # Model init, data order and every training draw derive from it.

  # -- data ---------------------------------------------------------------------------------
  c.data = d = ml_collections.ConfigDict()
  d.source = "tfds"                # 'tfds' | 'folder' | 'digits' (built-in demo set) |
                                   # 'photos' (crops of 10 bundled photographs, 1 class each;
                                   # needs scikit-image installed, reads its files only) |
                                   # 'synthetic' (random images of the real shapes: a smoke
                                   # test of compile, steps, checkpoint and resume, no data).
  d.synthetic_examples = 100_000   # 'synthetic': train split size (eval: a tenth).
  d.tfds_name = "imagenet2012"     # TFDS dataset read with tfds.data_source (array_record).
  d.tfds_data_dir = None           # None: TFDS's default (~/tensorflow_datasets).
  d.folder = ""                    # 'folder': root of class subfolders of JPEG/PNG files.
  d.eval_folder = ""               # 'folder': held-out split in the same layout ('' = none).
  d.train_split = "train"
  d.eval_split = "validation"
  d.image_size = 256               # Square images; must be divisible by model.patch_size.
  d.channels = 3                   # 1 or 3.
  d.num_classes = 1000
  d.random_flip = True             # Horizontal flips in training.
  d.bad_images = "skip"            # 'skip' (logged and counted) | 'raise'.
  d.worker_count = 0               # grain worker processes per host (0 = in-process).
  d.worker_buffer_size = 2

  # -- model --------------------------------------------------------------------------------
  c.model = m = ml_collections.ConfigDict()
  m.patch_size = 16                # 16x16x3 = 768 pixels per patch at 256px: 256 tokens.
  m.direct_pixel = False           # True: no state; the head generates the P pixels itself.
  m.label_drop = 0.1               # [ours] Fraction of labels replaced by the null class (CFG).

  m.backbone = b = ml_collections.ConfigDict()
  b.width = 768
  b.depth = 12
  b.num_heads = 12
  b.mlp_ratio = 4.0
  b.mlp_type = "swiglu"            # 'swiglu' | 'gelu'.
  b.norm = "rmsnorm"               # 'rmsnorm' | 'layernorm'.
  b.qk_norm = True
  b.pos_emb = "rope2d"             # 'rope2d' | 'learned'.
  b.rope_theta = 10000.0
  b.num_class_tokens = 1           # Class tokens before the first patch.
  b.scan_layers = True             # One compiled layer under lax.scan: fast compiles at depth.
  b.remat_policy = "none"          # 'none' | 'full' | any jax.checkpoint_policies name.
  b.attention = "xla"              # 'xla' (any platform) | 'cudnn' (fused flash attention on
                                   # NVIDIA GPUs, bf16/f16) | 'splash' (TPU Pallas kernel, L a
                                   # multiple of 128). KV-cached decoding always uses 'xla'.
  b.dtype = "float32"              # Compute dtype: 'float32' | 'bfloat16'.
  b.param_dtype = "float32"

  m.head = h = ml_collections.ConfigDict()
  h.width = 1024                   # [ours] MAR-style AdaLN residual MLP.
  h.depth = 6
  h.prediction = "v"               # [ours] 'v' | 'x' | 'eps' (rectified flow; loss in v-space).
  h.num_draws = 4                  # [ours] Noise draws per position per step.
  h.time_sampling = "logit_normal"  # 'uniform' | 'logit_normal'.
  h.logit_mean = 0.0
  h.logit_std = 1.0
  h.dtype = "float32"
  h.param_dtype = "float32"

  m.state = s = ml_collections.ConfigDict()
  s.dim = 16                       # Z: 16 in the paper's main experiments.
  s.width = 512                    # [ours] Residual MLP width of E and G.
  s.depth = 2
  s.norm = "layernorm"             # [ours] 'layernorm' (unit scale per patch) | 'tanh' | 'none'.
  s.decoder_context = False        # [ours] G also reads the backbone output h_i. The
                                   # reconstruction loss never trains the backbone through it.
  s.project = True                 # [ours] G projects its input onto the states E can output
                                   # (the norm above) before decoding: noised training inputs and
                                   # sampled (CFG-extrapolated) states are decoded from the same set
                                   # G is trained on. Same projection in training and sampling.
  s.dtype = "float32"
  s.param_dtype = "float32"

  # -- the backbone's inputs (the ablation axis) ---------------------------------------------
  c.rollout = r = ml_collections.ConfigDict()
  r.mode = "pra"                   # 'teacher' | 'pixel_noise' | 'recon' | 'pra' | 'head_sample' | 'exact'.
  r.sigma_law = "uniform"          # [ours] 'fixed' (sigma) | 'uniform' (per position in
                                   # [sigma_min, sigma_max]) | 'schedule' (uniform, with the upper
                                   # end ramped from sigma_min to sigma_max over schedule_steps).
  r.sigma = 0.5
  r.sigma_min = 0.0
  r.sigma_max = 1.0
  r.schedule_steps = 10000
  r.pixel_sigma = 0.1              # 'pixel_noise': the same law, scaled for [-1, 1] pixels.
  r.stop_gradient = True           # [ours] No gradient into the decoded inputs x_in.
  r.head_sample_steps = 4          # 'head_sample' / 'exact': head ODE steps per position.
  r.couple_t0 = 0.5                # [ours] 'head_sample' / 'exact': the head ODE starts at
                                   # t0 * E(x_i) + (1 - t0) * eps and runs from t0 to 1, so the
                                   # sampled input stays tied to the image whose states are the
                                   # targets. 0.5: noise and signal of equal size, the same
                                   # noise-to-signal ratio as pra's largest sigma (sigma_max = 1 on
                                   # a unit-RMS state). 1 = recon's inputs; 0 = a free sample that
                                   # ignores its prefix (the model learns to ignore it too).

  # -- loss ---------------------------------------------------------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.recon_weight = 1.0        # Weight of the L2 reconstruction term G(E(x)) vs x.

  # -- optimisation -------------------------------------------------------------------------
  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 1024              # Global batch, split over all devices of all processes.
  t.grad_accum_steps = 1           # Microbatches per update (one scan inside the step): the
                                   # activations of batch_size / grad_accum_steps at a time. The
                                   # per-device batch must divide by it.
  t.num_steps = 400_000
  t.lr = 4e-4
  t.lr_schedule = "cosine"         # 'cosine' | 'constant' (both after linear warmup).
  t.warmup_steps = 5000
  t.min_lr_ratio = 0.0
  t.weight_decay = 0.02
  # [ours] Which parameters decay, by name: every dense kernel and the class-embedding table.
  # Never decayed: norm scales (RMSNorm, LayerNorm, qk-norm), biases, and the position tables
  # (`class_pos`, learned `pos`), which carry where a token sits rather than what it holds.
  # Read from each parameter's path, so a scanned stack ([depth, ...] scales) decays the same.
  t.weight_decay_on = ("kernel", "embedding")
  t.b1 = 0.9
  t.b2 = 0.95
  t.grad_clip = 3.0                # Global-norm clip (0 = off).
  t.ema_decay = 0.9999
  t.nonfinite = "raise"            # 'raise' (stop after the last good checkpoint) | 'skip'.
  t.log_every = 100
  t.sample_every = 10_000          # Sample grid to TensorBoard and workdir/samples/ (0 = off).
  t.eval_every = 0                 # Periodic quality evaluation (0 = off); see `eval` below.
  t.profile_steps = ""             # 'FIRST:STOP': jax.profiler trace of steps FIRST..STOP-1 into
                                   # workdir/profile (TensorBoard's profile tab); '' = off.

  # -- evaluation (periodic during training, and pra_jax.evaluate) ----------------------------
  c.eval = e = ml_collections.ConfigDict()
  e.num_images = 1000              # Samples per periodic evaluation (classes balanced).
  e.inception_path = ""            # FID weights (.npz, see pra_jax.tools.convert_inception).
  e.ref_path = ""                  # ADM reference batch (.npz with mu, sigma[, arr_0]).
  e.batch_size = 100               # Inception batch.
  # With data.source='digits' the periodic evaluation uses the digits judge instead
  # (class accuracy of samples, Frechet distance in its features); no files needed.

  # -- sharding -----------------------------------------------------------------------------
  c.sharding = sh = ml_collections.ConfigDict()
  sh.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})  # -1 = fill.

  # -- checkpoints --------------------------------------------------------------------------
  c.checkpoint = ck = ml_collections.ConfigDict()
  ck.every = 5000
  ck.max_to_keep = 3
  ck.async_save = True

  # -- sampling -----------------------------------------------------------------------------
  c.sample = sp = ml_collections.ConfigDict()
  sp.num_steps = 50                # Head ODE steps per patch.
  sp.solver = "euler"              # 'euler' | 'heun'.
  sp.cfg = 3.0                     # Guidance scale (1 = none).
  sp.cfg_schedule = "linear"       # 'constant' | 'linear' (1 -> cfg over positions).
  sp.temperature = 1.0
  sp.use_ema = True
  sp.batch_size = 64
  return c


def imagenet_256(backbone: dict, head: dict, state: dict, remat_policy: str):
  """The S/B/L recipe: ImageNet 256 from TFDS, 16x16x3 patches (256 tokens of 768 pixels),
  bf16 compute with float32 parameters; only the size preset and remat differ per size."""
  c = base_config()
  d = c.data
  d.source, d.tfds_name = "tfds", "imagenet2012"   # array_record; README has the one-time build.
  d.image_size, d.channels, d.num_classes = 256, 3, 1000
  c.model.patch_size = 16
  b = c.model.backbone
  b.update(backbone)
  b.scan_layers = True             # One compiled block under lax.scan.
  b.remat_policy = remat_policy
  b.dtype = "bfloat16"             # bf16 compute, float32 parameters and optimizer state.
  c.model.head.update(head)
  c.model.head.dtype = "bfloat16"
  c.model.state.update(state)      # E and G stay float32: small, and they set pixel precision.
  return c
