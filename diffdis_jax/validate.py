"""Checks of a config before anything is compiled or written.

Every problem is reported as one `ConfigError` line that says what is wrong and how to fix it.
`validate` runs the checks every run shares, then the method's own checks (method_checks(): one
function per concern, so each method's model, objective and data are checked separately;
DiffDis' are in validate_diffdis.py),
then the mesh checks.
"""
from __future__ import annotations

import os

import jax

from diffdis_jax.diffusion.edm import TEACHER_SIGMA_POLICIES

DATASETS = ('digits', 'imagenet256_latents')  # SD-DiT


class ConfigError(ValueError):
  pass


def _check(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def _one_of(value, allowed, field: str):
  _check(value in allowed, f'{field}={value!r} is not one of {list(allowed)}; '
                           f'pass --config.{field}=<one of them>')


def validate(config, num_devices: int | None = None):
  """Raise ConfigError on the first problem found. `num_devices` enables the mesh checks."""
  check_common(config)
  for check in method_checks()[config.method]:
    check(config)
  if num_devices is not None:
    check_mesh(config, num_devices)


# ----------------------------------------------------------------------------- every method


def check_common(config):
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.build import DTYPES
  from diffdis_jax.objectives import OBJECTIVES

  _one_of(config.method, sorted(set(OBJECTIVES) & set(method_checks())), 'method')
  for field in ('total_steps', 'batch_size', 'log_every', 'checkpoint_every', 'sample_every',
                'keep_checkpoints'):
    value = config[field]
    _check(isinstance(value, int) and value > 0,
           f'{field} must be a positive integer, got {value!r}; pass --config.{field}=N')
  _check(0.0 <= config.ema_decay < 1.0, f'ema_decay must be in [0, 1), got {config.ema_decay}')
  _one_of(config.nonfinite, ('skip', 'stop'), 'nonfinite')
  _one_of(config.compute_dtype, sorted(DTYPES), 'compute_dtype')
  if 'attention_impl' in config.model:
    from diffdis_jax.nn.attention import IMPLEMENTATIONS  # pylint: disable=g-import-not-at-top
    _one_of(config.model.attention_impl, IMPLEMENTATIONS, 'model.attention_impl')
    # elsewhere splash runs through the Pallas interpreter: correct, and far too slow to train
    _check(config.model.attention_impl != 'splash' or jax.default_backend() == 'tpu',
           f"model.attention_impl='splash' is a TPU kernel and this backend is "
           f"{jax.default_backend()}; pass --config.model.attention_impl=None (or 'cudnn' on GPU)")
  if 'conv_impl' in config.model:
    from diffdis_jax.nn import convolution  # pylint: disable=g-import-not-at-top
    _one_of(config.model.conv_impl, convolution.IMPLEMENTATIONS, 'model.conv_impl')
  if 'remat' in config.model:
    from diffdis_jax.nn.layers import REMAT_POLICIES  # pylint: disable=g-import-not-at-top
    _one_of(config.model.remat, REMAT_POLICIES, 'model.remat')


def check_mesh(config, num_devices: int):
  from diffdis_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  try:
    sizes = mesh_lib.resolve_mesh_shape(config.mesh, num_devices)
  except mesh_lib.MeshError as e:
    raise ConfigError(str(e)) from None
  dp = sizes[0] * sizes[1]
  _check(config.batch_size % dp == 0,
         f'batch_size {config.batch_size} is not divisible by the data-parallel size {dp} '
         '(mesh.data * mesh.fsdp); change --config.batch_size or the mesh')


# ----------------------------------------------------------------------------- SD-DiT


def check_sddit_model(config):
  from diffdis_jax.nn.dit import parse_dit_name  # pylint: disable=g-import-not-at-top
  m = config.model
  try:
    depth, width, heads, patch = parse_dit_name(m.name)
  except ValueError as e:
    raise ConfigError(f'model.name: {e}') from None
  width, heads, depth = m.width or width, m.num_heads or heads, m.depth or depth
  _check(width % heads == 0, f'model width {width} is not divisible by {heads} heads')
  _check(m.input_size % patch == 0,
         f'model.input_size {m.input_size} is not divisible by the patch size {patch}')
  _one_of(m.decoder_mode, ('separate', 'split'), 'model.decoder_mode')
  _one_of(m.infill, ('noisy', 'mask_token'), 'model.infill')
  if m.decoder_mode == 'split':
    _check(0 <= m.decoder_depth <= depth,
           f'model.decoder_depth {m.decoder_depth} must be between 0 and the depth {depth}')
  else:
    _check(m.decoder_depth >= 1 and m.decoder_width % m.decoder_heads == 0,
           'a separate decoder needs decoder_depth >= 1 and decoder_width divisible by '
           'decoder_heads')


def check_sddit_objective(config):
  s = config.sddit
  _check(0.0 <= s.mask_ratio < 1.0, f'sddit.mask_ratio must be in [0, 1), got {s.mask_ratio}')
  _check(s.dis_weight >= 0, f'sddit.dis_weight must be >= 0, got {s.dis_weight}')
  _one_of(s.teacher_sigma, TEACHER_SIGMA_POLICIES, 'sddit.teacher_sigma')
  _one_of(s.gen_loss_tokens, ('all', 'visible'), 'sddit.gen_loss_tokens')
  _check(not (s.gen_loss_tokens == 'visible' and s.mask_ratio == 0 and s.masked_recon_weight),
         'sddit.masked_recon_weight needs a mask: set sddit.mask_ratio > 0')
  _one_of(config.sample.solver, ('heun', 'euler'), 'sample.solver')
  _check(config.sample.steps >= 1, 'sample.steps must be >= 1')


def check_sddit_data(config):
  m = config.model
  _one_of(config.data.name, DATASETS, 'data.name')
  if config.data.name == 'digits':
    _check(m.num_classes == 10 and m.in_channels == 1 and m.input_size == config.data.image_size,
           'the digits data needs model.num_classes=10, model.in_channels=1 and '
           'model.input_size=data.image_size')
  elif not config.data.dir or not os.path.isdir(config.data.dir):
    raise ConfigError(
        f'dataset {config.data.name} not found at data.dir={config.data.dir!r}; prepare it with '
        '`python launch/main.py --mode=extract_latents --config=<this config> --workdir=DIR` '
        '(see README, "ImageNet latents") and pass --config.data.dir=DIR')


def method_checks() -> dict:
  """method -> its checks, run in order after check_common (DiffDis': validate_diffdis.py)."""
  from diffdis_jax import validate_diffdis  # pylint: disable=g-import-not-at-top
  return {'sddit': (check_sddit_model, check_sddit_objective, check_sddit_data),
          'diffdis': validate_diffdis.CHECKS}


def validate_run_fields(config):
  """Fields of the run itself that `validate` leaves to this function (reliability issue)."""
  every = config.get('preemption_check_every', 1)
  _check(isinstance(every, int) and every > 0,
         f'preemption_check_every must be a positive integer, got {every!r}; '
         'pass --config.preemption_check_every=N')
  lr = config.optim.lr
  _check(lr > 0 and lr != float('inf'),
         f'optim.lr must be a positive number, got {lr}; pass --config.optim.lr=1e-4')


def validate_paths(config):
  """Files the config names exist and hold what they should; nothing is unpickled."""
  weights = config.get('init', {}).get('dit_weights', '')
  if weights:
    _check_dit_weights(config, weights)


def _check_dit_weights(config, path: str):
  """A facebookresearch/DiT safetensors file whose shapes are the configured model's."""
  # pylint: disable=g-import-not-at-top
  from safetensors import safe_open

  from diffdis_jax.nn.dit import parse_dit_name
  from diffdis_jax.weights.convert import CONVERT_ONE_LINER, PICKLE_SUFFIXES

  field = f'init.dit_weights={path!r}'
  _check(not path.endswith(PICKLE_SUFFIXES),
         f'{field} is a pickle checkpoint, which is never loaded (unpickling runs arbitrary '
         f'code); convert it to safetensors: {CONVERT_ONE_LINER}')
  _check(os.path.isfile(path), f'{field}: no such file; pass --config.init.dit_weights=FILE')
  try:
    with safe_open(path, framework='numpy') as f:  # reads the header only
      shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'{field} is not a safetensors file ({type(e).__name__}); convert it: '
                      f'{CONVERT_ONE_LINER}') from None
  m = config.model
  depth, width, _, patch = parse_dit_name(m.name)
  depth, width = m.depth or depth, m.width or width
  want = {'x_embedder.proj.weight': (width, m.in_channels, patch, patch),
          'y_embedder.embedding_table.weight': (m.num_classes + 1, width)}
  got_depth = len({k.split('.')[1] for k in shapes if k.startswith('blocks.')})
  wrong = [f'{k} {shapes.get(k)} (want {v})' for k, v in want.items() if shapes.get(k) != v]
  if got_depth != depth:
    wrong.append(f'{got_depth} blocks (want {depth})')
  _check(not wrong, f'{field} does not fit model {m.name} (width {width}, depth {depth}, '
                    f'{m.in_channels} channels, {m.num_classes} classes): {"; ".join(wrong)}')


def validate_workdir(workdir: str):
  """The workdir is a directory this process can write, or can be created."""
  path = os.path.abspath(workdir)
  _check(not os.path.exists(path) or os.path.isdir(path),
         f'--workdir={workdir} is a file, not a directory; pass another --workdir')
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  _check(os.path.isdir(parent),
         f'--workdir={workdir} cannot be created: {parent} is a file; pass another --workdir')
  _check(os.access(parent, os.W_OK | os.X_OK),
         f'--workdir={workdir} is not writable ({parent}); pass a --workdir you can write')


def _existing_file(path: str, field: str, hint: str):
  _check(bool(path), f'{field} is not set; pass --config.{field}=PATH ({hint})')
  _check(os.path.isfile(path), f'{field}={path!r} does not exist; pass --config.{field}=PATH '
                               f'({hint})')


def _check_vae(config):
  if config.model.in_channels in (1, 3):
    return
  path = config.sample.vae
  _check(bool(path), f'model.in_channels={config.model.in_channels}: latent samples need a VAE '
                     'decoder; pass --config.sample.vae=DIR (a diffusers AutoencoderKL folder)')
  for name in ('config.json', 'diffusion_pytorch_model.safetensors'):
    _check(os.path.isfile(os.path.join(path, name)),
           f'sample.vae={path!r} holds no {name}; pass a diffusers AutoencoderKL folder '
           '(see docs/weights.md)')


def validate_eval_inputs(config, mode: str, workdir: str, num_devices: int | None = None):
  """The files and sizes `--mode=sample`, `--mode=eval` and FID during training need."""
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.eval.sample_npz import LABEL_MODES, default_output
  from diffdis_jax.parallel import mesh as mesh_lib
  if config.method == 'diffdis':  # no FID: SD-DiT's sample and eval fields do not exist
    _check(mode != 'sample', '--mode=sample writes class-conditional samples for FID '
                             '(method=sddit); for DiffDis use --mode=grid (text-to-image grid)')
    if mode == 'eval':
      from diffdis_jax.eval.diffdis_eval import check_eval_inputs
      check_eval_inputs(config, workdir)
    return
  s, e = config.sample, config.eval
  weights_hint = 'pytorch-fid weights as safetensors, see docs/evaluation.md'
  ref_hint = 'an ADM reference batch .npz, see docs/evaluation.md'
  fid_in_training = mode == 'train' and e.fid_every > 0
  if mode == 'sample' or fid_in_training:
    _check(config.method == 'sddit', f'--mode=sample and eval.fid_every need a class-conditional '
                                     f'model (method=sddit), not method={config.method}')
    _one_of(s.labels, LABEL_MODES, 'sample.labels')
    _check(isinstance(s.batch_size, int) and s.batch_size > 0,
           f'sample.batch_size must be a positive integer, got {s.batch_size!r}')
    if num_devices is not None:
      sizes = mesh_lib.resolve_mesh_shape(config.mesh, num_devices)
      dp = sizes[0] * sizes[1]
      _check(s.batch_size % dp == 0, f'sample.batch_size {s.batch_size} is not divisible by the '
                                     f'data-parallel size {dp}; change --config.sample.batch_size')
    _check_vae(config)
  if mode == 'sample':
    _check(s.num_samples > 0, f'sample.num_samples must be positive, got {s.num_samples}')
    steps = os.path.join(workdir, 'checkpoints')
    _check(os.path.isdir(steps) and any(n.isdigit() for n in os.listdir(steps)),
           f'no checkpoint under {steps}: train first, or pass the --workdir of a trained run')
    output = default_output(config, workdir)
    _check(not os.path.exists(output), f'{output} exists and would be overwritten; remove it or '
                                       'pass --config.sample.output=PATH')
  if fid_in_training:
    _check(e.fid_samples >= 2 and e.fid_samples % s.batch_size == 0,
           f'eval.fid_samples {e.fid_samples} must be a multiple of sample.batch_size '
           f'{s.batch_size}')
  if mode == 'eval' or fid_in_training:
    _existing_file(e.inception_weights, 'eval.inception_weights', weights_hint)
    _existing_file(e.reference_npz, 'eval.reference_npz', ref_hint)
  if mode == 'eval':
    samples = e.samples_npz or default_output(config, workdir)
    _check(os.path.isfile(samples), f'samples file {samples} does not exist; write it with '
                                    '--mode=sample or pass --config.eval.samples_npz=PATH')


def validate_extraction(config):
  """--mode=extract_latents: the VAE, the image source and the sizes (data/imagenet_latents)."""
  e, vae = config.data.extract, config.data.vae_path
  _check(bool(vae), 'data.vae_path is empty; pass --config.data.vae_path=<diffusers '
                    'AutoencoderKL folder (or SD folder holding vae/) or .safetensors file>')
  _check(os.path.exists(vae), f'data.vae_path={vae!r} does not exist; pass '
                              '--config.data.vae_path=<folder or .safetensors file>')
  for field in ('image_size', 'batch_size', 'shard_size'):
    value = e[field]
    _check(isinstance(value, int) and value > 0, f'data.extract.{field} must be a positive '
                                                 f'integer, got {value!r}')
  _check(e.image_size % 8 == 0, f'data.extract.image_size={e.image_size} is not a multiple of '
                                '8 (the VAE downsamples by 8)')
  # source_dir is where a manual_dir gets prepared: it need exist only without one
  for field in ('manual_dir',) if e.manual_dir else ('source_dir',):
    path = e[field]
    _check(not path or os.path.isdir(path), f'data.extract.{field}={path!r} is not a '
                                            f'directory; pass --config.data.extract.{field}=DIR')


def validate_data(config):
  """An extracted latent set in data.dir whose latents fit the model (run after `validate`)."""
  if config.data.name != 'imagenet256_latents':
    return
  info = os.path.join(config.data.dir, 'dataset_info.json')
  _check(os.path.isfile(info), f'data.dir={config.data.dir!r} holds no dataset_info.json: '
                               'the latent extraction did not finish there; run --mode='
                               'extract_latents again with --workdir=<that dir> to complete it')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(config.data.dir)
  split = config.data.get('split', 'train')
  _check(split in builder.info.splits, f'data.split={split!r} is not in {config.data.dir} '
                                       f'(it holds {sorted(builder.info.splits)})')
  classes = builder.info.features['label'].num_classes
  _check(classes <= config.model.num_classes,
         f'data.dir holds {classes} classes but model.num_classes={config.model.num_classes}; '
         f'pass --config.model.num_classes={classes}')
  _, side, _, channels = builder.info.features['mean'].shape
  m = config.model
  _check((side, channels) == (m.input_size, m.in_channels),
         f'the latents in data.dir are {side}x{side}x{channels} but the model takes '
         f'{m.input_size}x{m.input_size}x{m.in_channels}; set --config.model.input_size='
         f'{side} --config.model.in_channels={channels}')
