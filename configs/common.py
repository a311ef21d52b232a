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
  d.folder = ""                    # 'folder': the train split's root, one subfolder of JPEG/PNG
                                   # files per class; class ids follow the sorted subfolder names.
  d.eval_folder = ""               # 'folder': the held-out split's root in the same layout ('' =
                                   # evaluate on `folder`, with a warning).
  d.train_split = "train"          # The split trained on: a TFDS split name (the other sources
                                   # have a train and an eval split and also accept 'train').
  d.eval_split = "validation"      # The held-out split, the one name evaluation reads: a TFDS
                                   # split name (imagenet2012's is 'validation'); the other
                                   # sources have a train and an 'eval' split and take this name
                                   # (or 'eval') for their held-out one.
  d.image_size = 256               # Square images; must be divisible by model.patch_size.
  d.channels = 3                   # 1 or 3.
  d.num_classes = 1000             # Labels 0..num_classes-1; label num_classes is the null class.
  d.random_flip = True             # Horizontal flips in training.
  d.bad_images = "skip"            # 'skip' (logged and counted) | 'raise'.
  d.worker_count = 0               # grain worker processes per host (0 = in-process).
  d.worker_buffer_size = 2         # Batches each grain worker keeps ready (worker_count > 0).

  # -- model --------------------------------------------------------------------------------
  c.model = m = ml_collections.ConfigDict()
  m.patch_size = 16                # 16x16x3 = 768 pixels per patch at 256px: 256 tokens.
  m.direct_pixel = False           # True: no state; the head generates the P pixels itself.
  m.label_drop = 0.1               # [ours] Fraction of labels replaced by the null class (CFG).

  m.backbone = b = ml_collections.ConfigDict()
  b.width = 768                    # D: token width.
  b.depth = 12                     # Transformer blocks.
  b.num_heads = 12                 # Attention heads of width / num_heads (with rope2d a multiple
                                   # of 4).
  b.mlp_ratio = 4.0                # MLP hidden width / width.
  b.mlp_type = "swiglu"            # 'swiglu' | 'gelu'.
  b.norm = "rmsnorm"               # 'rmsnorm' | 'layernorm'.
  b.qk_norm = True                 # Queries and keys normalised per head (with `norm`) before
                                   # their dot product, which keeps the attention logits bounded.
  b.pos_emb = "rope2d"             # 'rope2d' | 'learned'.
  b.rope_theta = 10000.0           # RoPE base wavelength (pos_emb='rope2d').
  b.num_class_tokens = 1           # Class tokens before the first patch.
  b.scan_layers = True             # One compiled layer under lax.scan: fast compiles at depth.
  b.remat_policy = "none"          # 'none' | 'full' | any jax.checkpoint_policies name.
  b.attention = "xla"              # 'xla' (any platform) | 'cudnn' (fused flash attention on
                                   # NVIDIA GPUs, bf16/f16) | 'splash' (TPU Pallas kernel, L a
                                   # multiple of 128). KV-cached decoding always uses 'xla'.
  b.dtype = "float32"              # Compute dtype: 'float32' | 'bfloat16' | 'float16'.
  b.param_dtype = "float32"        # Parameter dtype (the optimizer state follows it).

  m.head = h = ml_collections.ConfigDict()
  h.width = 1024                   # [ours] MAR-style AdaLN residual MLP.
  h.depth = 6                      # AdaLN residual blocks.
  h.prediction = "v"               # [ours] 'v' | 'x' | 'eps' (rectified flow; loss in v-space).
  h.num_draws = 4                  # [ours] Noise draws per position per step.
  h.time_sampling = "logit_normal"  # 'uniform' | 'logit_normal'.
  h.logit_mean = 0.0               # 'logit_normal': t = sigmoid(logit_mean + logit_std * N(0, 1)).
  h.logit_std = 1.0                # (A larger std spends more steps near t = 0 and 1.)
  h.dtype = "float32"              # Compute dtype, as backbone.dtype.
  h.param_dtype = "float32"        # Parameter dtype, as backbone.param_dtype.

  m.state = s = ml_collections.ConfigDict()
  s.dim = 16                       # Z: 16 in the paper's main experiments.
  s.width = 512                    # [ours] Residual MLP width of E and G.
  s.depth = 2                      # Residual blocks in E and in G each.
  s.norm = "layernorm"             # [ours] 'layernorm' (unit scale per patch) | 'tanh' | 'none'.
  s.decoder_context = False        # [ours] G also reads the backbone output h_i. The
                                   # reconstruction loss never trains the backbone through it.
  s.project = True                 # [ours] G projects its input onto the states E can output
                                   # (the norm above) before decoding: noised training inputs and
                                   # sampled (CFG-extrapolated) states are decoded from the same set
                                   # G is trained on. Same projection in training and sampling.
  s.dtype = "float32"              # E and G compute dtype, as backbone.dtype.
  s.param_dtype = "float32"        # E and G parameter dtype, as backbone.param_dtype.

  # -- the backbone's inputs (the ablation axis) ---------------------------------------------
  c.rollout = r = ml_collections.ConfigDict()
  r.mode = "pra"                   # 'teacher' | 'pixel_noise' | 'recon' | 'pra' | 'head_sample' |
                                   # 'exact' (pra_jax.rollout's table says what each feeds).
  r.sigma_law = "uniform"          # [ours] 'fixed' (sigma) | 'uniform' (per position in
                                   # [sigma_min, sigma_max]) | 'schedule' (uniform, with the upper
                                   # end ramped from sigma_min to sigma_max over schedule_steps).
  r.sigma = 0.5                    # 'fixed': the std of the Gaussian noise added to each state
                                   # (states have unit RMS under state.norm='layernorm').
  r.sigma_min = 0.0                # 'uniform' / 'schedule': lower end of the sigma range.
  r.sigma_max = 1.0                # 'uniform' / 'schedule': upper end of the sigma range.
  r.schedule_steps = 10000         # 'schedule': training steps until the upper end is sigma_max.
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
  t.num_steps = 400_000            # Optimizer updates in the whole run.
  t.lr = 4e-4                      # Peak learning rate, reached at the end of warmup.
  t.lr_schedule = "cosine"         # 'cosine' | 'constant' (both after linear warmup).
  t.warmup_steps = 5000            # Steps of linear warmup from 0 to lr.
  t.min_lr_ratio = 0.0             # 'cosine': the final learning rate, as a fraction of lr.
  t.weight_decay = 0.02            # AdamW's decoupled decay (scaled by the learning rate).
  # [ours] Which parameters decay, by name: every dense kernel and the class-embedding table.
  # Never decayed: norm scales (RMSNorm, LayerNorm, qk-norm), biases, and the position tables
  # (`class_pos`, learned `pos`), which carry where a token sits rather than what it holds.
  # Read from each parameter's path, so a scanned stack ([depth, ...] scales) decays the same.
  t.weight_decay_on = ("kernel", "embedding")
  t.b1 = 0.9                       # AdamW decay rate of the first moment.
  t.b2 = 0.95                      # AdamW decay rate of the second moment.
  t.grad_clip = 3.0                # Global-norm clip (0 = off).
  t.ema_decay = 0.9999             # Per-update decay of the weight EMA that samples use (warmed
                                   # up as (1 + n) / (10 + n) over the first updates).
  t.nonfinite = "raise"            # 'raise' (stop after the last good checkpoint) | 'skip'.
  t.log_every = 100                # Steps between metric logs (stdout and TensorBoard).
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
  ck.every = 5000                  # Steps between checkpoints (one is also saved at the end).
  ck.max_to_keep = 3               # Newest checkpoints kept (None = all).
  ck.async_save = True             # Write checkpoints in the background while training runs.

  # -- sampling -----------------------------------------------------------------------------
  c.sample = sp = ml_collections.ConfigDict()
  sp.num_steps = 50                # Head ODE steps per patch.
  sp.solver = "euler"              # 'euler' | 'heun'.
  sp.cfg = 3.0                     # Guidance scale (1 = none).
  sp.cfg_schedule = "linear"       # 'constant' | 'linear' (1 -> cfg over positions).
  sp.temperature = 1.0             # Scales the head's initial noise (1 = the learned law).
  sp.use_ema = True                # Sample the EMA weights (False: the raw trained ones).
  sp.batch_size = 64               # Images per device per call (sample, grids, evals alike).
  return c


def imagenet_256(backbone: dict, head: dict, state: dict, remat_policy: str):
  """The S/B/L recipe: the defaults above (ImageNet 256 from TFDS as array_record, see the README
  for the one-time build; 16x16x3 patches, 256 tokens of 768 pixels; a scanned layer stack) with
  bf16 compute and float32 parameters; only the size preset and remat differ per size."""
  c = base_config()
  b = c.model.backbone
  b.update(backbone)
  b.remat_policy = remat_policy
  b.dtype = "bfloat16"             # bf16 compute, float32 parameters and optimizer state.
  c.model.head.update(head)
  c.model.head.dtype = "bfloat16"
  c.model.state.update(state)      # E and G stay float32: small, and they set pixel precision.
  return c
