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
  config = ml_collections.ConfigDict()
  config.method = 'sddit'
  config.seed = 0
  config.total_steps = 400_000
  config.batch_size = 256            # global, over all hosts and devices
  config.log_every = 100
  config.checkpoint_every = 10_000
  config.keep_checkpoints = 3
  config.sample_every = 20_000
  config.ema_decay = 0.9999          # sampling EMA
  config.ema_warmup = True           # decay min(ema_decay, (1+step)/(10+step)) early on
  config.nonfinite = 'skip'          # non-finite loss or gradients: 'skip' the update | 'stop'
  config.preemption_check_every = 10  # multi-host without jax's preemption service: steps
                                     # between the all-gathers that agree on a SIGTERM stop
  config.compute_dtype = 'float32'   # 'bfloat16' on TPU/GPU; 'auto': bfloat16 where the
                                     # hardware multiplies it, else float32 (core/dtypes.py)

  config.model = ml_collections.ConfigDict()
  config.model.name = 'DiT-XL/2'
  config.model.input_size = 32       # latent side: 256 px / 8
  config.model.in_channels = 4
  config.model.num_classes = 1000
  config.model.learn_sigma = False   # EDM predicts no variance
  config.model.decoder_mode = 'separate'  # 'separate' (MaskDiT: full stack + decoder) | 'split'
  config.model.decoder_depth = 8
  config.model.decoder_width = 512
  config.model.decoder_heads = 16
  config.model.infill = 'noisy'      # decoder input at masked positions: 'noisy' | 'mask_token'
  # the time embedding's frequencies exp(-ln(1e4) i / (128 - shift)): 0 is facebookresearch/
  # DiT's (and its released weights'); 1 is diffusers' DiTTransformer2DModel's, which only a
  # model trained with it can be exported to exactly (--mode=export, docs/weights.md)
  config.model.time_freq_shift = 0.0
  # None: 'einsum' on CPU, else jax's pick | 'einsum' | 'xla' | 'cudnn' (GPU); nn/attention.py
  config.model.attention_impl = config_dict.placeholder(str)
  # what each block keeps for its backward (nn/layers.py REMAT_POLICIES): 'none' | 'full'
  # (recompute the block) | 'dots' (keep the products with weights, recompute the rest)
  config.model.remat = 'none'
  # overrides of the named size (0: take it from model.name); tiny test models use them
  config.model.width = 0
  config.model.depth = 0
  config.model.num_heads = 0
  config.model.head = ml_collections.ConfigDict(
      dict(hidden=2048, bottleneck=256, out_dim=8192, num_layers=3))

  config.edm = ml_collections.ConfigDict(dict(sigma_data=0.5, p_mean=-1.2, p_std=1.2))
  # the denoising objective (diffusion/objective.py) of DiT, MaskDiT and SD-DiT alike: 'edm'
  # (MaskDiT's, SD-DiT's) | 'ddpm' (DiT's: epsilon and a learned-range variance, needs
  # model.learn_sigma=True) | 'flow' (SiT's linear interpolant with a velocity target; t
  # 'uniform' or 'logit_normal' with t_mean, t_std). The sampler follows it (sample.*)
  config.objective = 'edm'
  config.flow = ml_collections.ConfigDict(dict(t_distribution='uniform', t_mean=0.0, t_std=1.0))

  config.sddit = ml_collections.ConfigDict()
  config.sddit.mask_ratio = 0.2
  config.sddit.dis_weight = 1.0      # lambda; 0 turns off the teacher (DiT / MaskDiT baselines)
  config.sddit.patch_weight = 1.0
  config.sddit.global_weight = 0.0   # optional term on mean-pooled tokens
  config.sddit.teacher_sigma = 'karras_next'  # 'karras_next' | 'scale' | 'fixed' | 'equal'
  config.sddit.teacher_grid_steps = 18
  config.sddit.teacher_sigma_scale = 0.5
  config.sddit.teacher_sigma_fixed = 0.05
  config.sddit.student_temp = 0.1
  config.sddit.teacher_temp = 0.04
  config.sddit.teacher_temp_warmup_start = 0.04
  config.sddit.teacher_temp_warmup_steps = 0
  config.sddit.center_momentum = 0.9
  # the discriminative weight of the final phase (final_phase.fraction > 0); None keeps
  # dis_weight. 0 finishes on denoising alone: the teacher and its centres stay as they were
  config.sddit.final_phase_dis_weight = config_dict.placeholder(float)
  config.sddit.teacher_momentum = 0.996
  config.sddit.teacher_momentum_final = 1.0
  config.sddit.gen_loss_tokens = 'all'  # 'all' | 'visible'
  config.sddit.masked_recon_weight = 0.0  # MaskDiT-style term on masked patches
  config.sddit.label_dropout = 0.1

  config.optim = ml_collections.ConfigDict(
      dict(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, warmup_steps=0,
           grad_clip=0.0))
  # the last `fraction` of total_steps at a constant `lr`, with the task's final-phase config:
  # MaskDiT's unmasked fine-tune (its code: 5e-5 after 1e-4 at 50% masking); 0: no such phase
  config.final_phase = ml_collections.ConfigDict(dict(fraction=0.0, lr=5e-5))

  config.sample = ml_collections.ConfigDict()
  # the sampler of config.objective ('': its own; naming another is refused): 'edm' | 'ddpm'
  # (DiT's: trained here or its released weights, configs/dit_xl_official.py) | 'flow'
  config.sample.parameterization = ''
  # '': the objective's default (the first named): edm 'heun' | 'euler';  ddpm 'ancestral' |
  # 'ddim';  flow 'heun' | 'euler' (ODE) | 'euler_maruyama' (SiT's SDE)
  config.sample.solver = ''
  config.sample.steps = 40           # edm and flow; ddpm takes its steps from sample.respacing
  config.sample.respacing = '250'    # ddpm: DiT's respacing, 'N', 'N1,N2,..' or 'ddimN'
  config.sample.guidance = 1.5       # 1: no guidance
  # channels guided (the first N of the latent's; 0: all). DiT's sampler guides 3 of 4
  # (docs/evaluation.md, "Sampling DiT's released weights")
  config.sample.guidance_channels = 0
  config.sample.sigma_min = 0.002
  config.sample.sigma_max = 80.0
  config.sample.rho = 7.0
  config.sample.per_class = 4        # grid rows
  config.sample.grid_classes = 10    # grid columns: classes 0 .. grid_classes-1 (spread out)
  # --mode=sample: an ADM-format .npz for FID (docs/evaluation.md)
  config.sample.num_samples = 50_000
  config.sample.output = ''          # '' : <workdir>/samples.npz
  config.sample.batch_size = 256     # global; divisible by the data-parallel size
  config.sample.labels = 'random'    # 'random' (per index, as DiT's FID-50K) | 'balanced'
  config.sample.seed = 0             # noise and label of sample i: fold_in(PRNGKey(seed), i)
  config.sample.vae = ''             # diffusers AutoencoderKL folder; latent models need it

  config.eval = ml_collections.ConfigDict()
  # samples scored at the end by the image set's classifier (eval/classifier_metric.py):
  # fd_digits or fd_fmnist, and sample_class_acc (0: none)
  config.eval.metric_samples = 0
  config.eval.classifier_dir = ''    # its cache ('': <workdir>/classifier)
  # --mode=eval (docs/evaluation.md): FID, sFID, IS, precision, recall to <workdir>/eval.json
  config.eval.samples_npz = ''       # '' : sample.output, i.e. <workdir>/samples.npz
  config.eval.reference_npz = ''     # ADM reference batch, or eval/fid.save_reference output
  config.eval.inception_weights = ''  # pytorch-fid weights as safetensors (nn/inception.py)
  config.eval.batch_size = 200       # Inception batch (over the local devices)
  config.eval.fid_every = 0          # FID during training every N steps (0: off)
  config.eval.fid_samples = 5000     # samples per FID during training (logged as fid_<n>)
  # (DiffDis configs replace this section: configs/diffdis_common.diffdis_eval)

  config.data = ml_collections.ConfigDict()
  config.data.name = 'latents'       # 'digits' | 'fashion_mnist' (pixels) | 'latents' (extracted)
  config.data.dir = ''               # prepared latents (see README: extract_latents)
  config.data.image_size = 16        # digits only: upsampled side
  config.data.latent_scale = 0.18215
  config.data.split = 'train'        # split of data.dir the trainer reads
  config.data.vae_path = ''          # SD-VAE: diffusers AutoencoderKL folder or .safetensors
  # --mode=extract_latents: the images (a TFDS image classification set) and how to encode
  config.data.extract = ml_collections.ConfigDict()
  config.data.extract.source = 'imagenet2012'
  config.data.extract.source_dir = ''  # TFDS data_dir holding it prepared ('' = TFDS default)
  config.data.extract.manual_dir = ''  # or the official tar files to prepare it from (no download)
  config.data.extract.split = 'train'
  config.data.extract.image_size = 256  # ADM centre crop side; latents are image_size / 8
  config.data.extract.batch_size = 64  # per host
  config.data.extract.shard_size = 10_000  # examples per output shard (the unit of resuming)

  # --mode=export: a DiT's EMA params as diffusers' DiTTransformer2DModel folder
  # (weights/export.py; docs/weights.md). '': <workdir>/diffusers_dit
  config.export = ml_collections.ConfigDict(dict(output=''))

  config.init = ml_collections.ConfigDict()
  # a facebookresearch/DiT model converted to safetensors (docs/weights.md), checked against
  # the model's shapes before anything compiles: every parameter that fits by path and shape
  # initialises params, EMA and teacher (tasks/sddit.py; DiT baseline: all of them)
  config.init.dit_weights = ''

  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.axis_rules = AXIS_RULES
  return config


# DiT as a configuration of the SD-DiT objective: the stack's own blocks decode (so the
# parameters are exactly DiT's), no mask and no teacher. The DiT configs, the studies' 'dit'
# variant and the benchmarks' DiT counterpart all apply these.
DIT_BASELINE = {'model.decoder_mode': 'split', 'model.decoder_depth': 0,
                'sddit.dis_weight': 0.0, 'sddit.mask_ratio': 0.0}


def imagenet_config(model_name: str) -> ml_collections.ConfigDict:
  """SD-DiT on ImageNet 256 latents (SD-VAE, 32x32x4), MaskDiT's optimisation settings."""
  config = get_base_config()
  config.model.name = model_name
  config.compute_dtype = 'bfloat16'
  config.batch_size = 1024
  config.total_steps = 400_000
  return config


def sized_sddit(config, *, decoder_mode: str, decoder_depth: int, head_hidden: int,
                head_out_dim: int, decoder_width: int = 512, decoder_heads: int = 16):
  """One model size's SD-DiT layout (docs/paper_notes.md, "SD-DiT per model size"): which
  blocks decode, and the projection head's hidden width and prototype count. `decoder_width`
  and `decoder_heads` only matter to a 'separate' decoder; a 'split' one has the stack's."""
  m = config.model
  m.decoder_mode, m.decoder_depth = decoder_mode, decoder_depth
  if decoder_mode == 'separate':
    m.decoder_width, m.decoder_heads = decoder_width, decoder_heads
  m.head = ml_collections.ConfigDict(
      dict(hidden=head_hidden, bottleneck=256, out_dim=head_out_dim, num_layers=3))
  return config
