"""Defaults shared by every config. Each field a user may change lives here or in a config.

Choices the papers leave open carry the best reading of ../shared/papers as default; see
docs/paper_notes.md for the reasons.
"""
import ml_collections
from ml_collections import config_dict

# logical axis -> mesh axis (None: replicated). 'embed' is sharded by FSDP; heads and MLP width
# by tensor parallelism; the batch over both data axes.
AXIS_RULES = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('modulation', 'tensor'),
    ('embed_out', None),
    ('patch', None),
    ('classes', None),
    ('freq', None),
    ('proto', None),
    ('vocab', None),
    ('length', None),
    # activations (nn/layers.py): the batch over both data axes, heads and MLP width over
    # 'tensor', the residual width whole (it is the 'embed' of weights that fsdp splits)
    ('activation_batch', ('data', 'fsdp')),
    ('activation_length', None),
    ('activation_embed', None),
    ('activation_heads', 'tensor'),
    ('activation_mlp', 'tensor'),
)


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = 'sddit'
  c.seed = 0
  c.total_steps = 400_000
  c.batch_size = 256                 # global, over all hosts and devices
  c.log_every = 100
  c.checkpoint_every = 10_000
  c.keep_checkpoints = 3
  c.sample_every = 20_000
  c.ema_decay = 0.9999               # sampling EMA
  c.ema_warmup = True                # decay min(ema_decay, (1+step)/(10+step)) early on
  c.nonfinite = 'skip'               # non-finite loss or gradients: 'skip' the update | 'stop'
  c.preemption_check_every = 10      # multi-host without jax's preemption service: steps
                                     # between the all-gathers that agree on a SIGTERM stop
  c.compute_dtype = 'float32'        # 'bfloat16' on TPU/GPU

  c.model = ml_collections.ConfigDict()
  c.model.name = 'DiT-XL/2'
  c.model.input_size = 32            # latent side: 256 px / 8
  c.model.in_channels = 4
  c.model.num_classes = 1000
  c.model.learn_sigma = False        # EDM predicts no variance
  c.model.decoder_mode = 'separate'  # 'separate' (MaskDiT: full stack + decoder) | 'split'
  c.model.decoder_depth = 8
  c.model.decoder_width = 512
  c.model.decoder_heads = 16
  c.model.infill = 'noisy'           # decoder input at masked positions: 'noisy' | 'mask_token'
  # None: 'einsum' on CPU, else jax's pick | 'einsum' | 'xla' | 'cudnn' (GPU); nn/attention.py
  c.model.attention_impl = config_dict.placeholder(str)
  # what each block keeps for its backward (nn/layers.py REMAT_POLICIES): 'none' | 'full'
  # (recompute the block) | 'dots' (keep the products with weights, recompute the rest)
  c.model.remat = 'none'
  # overrides of the named size (0: take it from model.name); tiny test models use them
  c.model.width = 0
  c.model.depth = 0
  c.model.num_heads = 0
  c.model.head = ml_collections.ConfigDict(
      dict(hidden=2048, bottleneck=256, out_dim=8192, num_layers=3))

  c.edm = ml_collections.ConfigDict(dict(sigma_data=0.5, p_mean=-1.2, p_std=1.2))

  c.sddit = ml_collections.ConfigDict()
  c.sddit.mask_ratio = 0.2
  c.sddit.dis_weight = 1.0           # lambda; 0 turns off the teacher (DiT / MaskDiT baselines)
  c.sddit.patch_weight = 1.0
  c.sddit.global_weight = 0.0        # optional term on mean-pooled tokens
  c.sddit.teacher_sigma = 'karras_next'  # 'karras_next' | 'scale' | 'fixed' | 'equal'
  c.sddit.teacher_grid_steps = 18
  c.sddit.teacher_sigma_scale = 0.5
  c.sddit.teacher_sigma_fixed = 0.05
  c.sddit.student_temp = 0.1
  c.sddit.teacher_temp = 0.04
  c.sddit.teacher_temp_warmup_start = 0.04
  c.sddit.teacher_temp_warmup_steps = 0
  c.sddit.center_momentum = 0.9
  c.sddit.teacher_momentum = 0.996
  c.sddit.teacher_momentum_final = 1.0
  c.sddit.gen_loss_tokens = 'all'    # 'all' | 'visible'
  c.sddit.masked_recon_weight = 0.0  # MaskDiT-style term on masked patches
  c.sddit.label_dropout = 0.1

  c.optim = ml_collections.ConfigDict(
      dict(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, warmup_steps=0,
           grad_clip=0.0))

  c.sample = ml_collections.ConfigDict()
  c.sample.solver = 'heun'
  c.sample.steps = 40
  c.sample.guidance = 1.5            # 1: no guidance
  c.sample.sigma_min = 0.002
  c.sample.sigma_max = 80.0
  c.sample.rho = 7.0
  c.sample.per_class = 4             # grid rows
  c.sample.grid_classes = 10         # grid columns: classes 0 .. grid_classes-1 (spread out)
  # --mode=sample: an ADM-format .npz for FID (docs/evaluation.md)
  c.sample.num_samples = 50_000
  c.sample.output = ''               # '' : <workdir>/samples.npz
  c.sample.batch_size = 256          # global; divisible by the data-parallel size
  c.sample.labels = 'random'         # 'random' (per index, as DiT's FID-50K) | 'balanced'
  c.sample.seed = 0                  # noise and label of sample i: fold_in(PRNGKey(seed), i)
  c.sample.vae = ''                  # diffusers AutoencoderKL folder; latent models need it

  c.eval = ml_collections.ConfigDict()
  c.eval.digits_samples = 0          # digits only: samples for fd_digits / sample_class_acc
  # --mode=eval (docs/evaluation.md): FID, sFID, IS, precision, recall to <workdir>/eval.json
  c.eval.samples_npz = ''            # '' : sample.output, i.e. <workdir>/samples.npz
  c.eval.reference_npz = ''          # ADM reference batch, or eval/fid.save_reference output
  c.eval.inception_weights = ''      # pytorch-fid weights as safetensors (nn/inception.py)
  c.eval.batch_size = 200            # Inception batch (over the local devices)
  c.eval.fid_every = 0               # FID during training every N steps (0: off)
  c.eval.fid_samples = 5000          # samples per FID during training (logged as fid_<n>)
  # (DiffDis configs replace this section: configs/diffdis_common.diffdis_eval)

  c.data = ml_collections.ConfigDict()
  c.data.name = 'imagenet256_latents'  # 'digits' | 'imagenet256_latents'
  c.data.dir = ''                    # prepared latents (see README: extract_latents)
  c.data.image_size = 16             # digits only: upsampled side
  c.data.latent_scale = 0.18215
  c.data.split = 'train'             # split of data.dir the trainer reads
  c.data.vae_path = ''               # SD-VAE: diffusers AutoencoderKL folder or .safetensors
  # --mode=extract_latents: the images (a TFDS image classification set) and how to encode
  c.data.extract = ml_collections.ConfigDict()
  c.data.extract.source = 'imagenet2012'
  c.data.extract.source_dir = ''     # TFDS data_dir holding it prepared ('' = TFDS default)
  c.data.extract.manual_dir = ''     # or the official tar files to prepare it from (no download)
  c.data.extract.split = 'train'
  c.data.extract.image_size = 256    # ADM centre crop side; latents are image_size / 8
  c.data.extract.batch_size = 64     # per host
  c.data.extract.shard_size = 10_000  # examples per output shard (the unit of resuming)

  c.init = ml_collections.ConfigDict()
  # a facebookresearch/DiT model converted to safetensors (docs/weights.md), checked against
  # the model's shapes before anything compiles: every parameter that fits by path and shape
  # initialises params, EMA and teacher (tasks/sddit.py; DiT baseline: all of them)
  c.init.dit_weights = ''

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.axis_rules = AXIS_RULES
  return c


def imagenet_config(model_name: str) -> ml_collections.ConfigDict:
  """SD-DiT on ImageNet 256 latents (SD-VAE, 32x32x4), MaskDiT's optimisation settings."""
  c = get_base_config()
  c.model.name = model_name
  c.compute_dtype = 'bfloat16'
  c.batch_size = 1024
  c.total_steps = 400_000
  return c
