"""SD-DiT's config checks: the DiT, the objective, the data, the DiT weights it may start from,
and what --mode=sample, --mode=eval and FID during training need. Each problem is one
ConfigError line that says what to fix; only file headers are read.
"""
from __future__ import annotations

import os

from safetensors import safe_open

from diffdis_jax.core.checks import (ConfigError, check, existing_file, has_checkpoint, one_of,
                                     positive_int)
from diffdis_jax.core.spaces import is_pixel_space
from diffdis_jax.data import fashion_mnist
from diffdis_jax.data.latent_sets import check_latent_set
from diffdis_jax.data.pipeline import TRAIN_SOURCES
from diffdis_jax.diffusion import flow
from diffdis_jax.diffusion.ddpm import respaced_schedule
from diffdis_jax.diffusion.edm import TEACHER_SIGMA_POLICIES
from diffdis_jax.diffusion.objective import NAMES as OBJECTIVES
from diffdis_jax.diffusion.objective import from_config as objective_from_config
from diffdis_jax.eval.image_set_metrics import image_set, images_dir
from diffdis_jax.eval.sample_npz import LABEL_MODES, default_output
from diffdis_jax.eval.sddit_sampler import PARAMETERIZATIONS, sampler_of
from diffdis_jax.nn.dit import DECODER_MODES, INFILLS, parse_dit_name
from diffdis_jax.objectives.sddit import GEN_LOSS_TOKENS
from diffdis_jax.parallel import mesh as mesh_lib
from diffdis_jax.weights.convert import CONVERT_ONE_LINER, PICKLE_SUFFIXES


def dit_sizes(model_config) -> tuple[int, int, int, int]:
  """(depth, width, heads, patch) of the named DiT with the config's overrides applied."""
  m = model_config
  try:
    depth, width, heads, patch = parse_dit_name(m.name)
  except ValueError as err:
    raise ConfigError(f'model.name: {err}') from None
  return m.depth or depth, m.width or width, m.num_heads or heads, patch


def check_model(config):
  m = config.model
  depth, width, heads, patch = dit_sizes(m)
  check(width % heads == 0, f'model width {width} is not divisible by {heads} heads')
  check(m.input_size % patch == 0,
        f'model.input_size {m.input_size} is not divisible by the patch size {patch}')
  one_of(m.decoder_mode, DECODER_MODES, 'model.decoder_mode')
  one_of(m.infill, INFILLS, 'model.infill')
  shift = m.get('time_freq_shift', 0.0)
  check(isinstance(shift, (int, float)) and not isinstance(shift, bool) and 0 <= shift < 64,
        f'model.time_freq_shift must be a number in [0, 64), got {shift!r}; pass 0 (DiT\'s) '
        "or 1 (diffusers')")
  if m.decoder_mode == 'split':
    check(0 <= m.decoder_depth <= depth,
          f'model.decoder_depth {m.decoder_depth} must be between 0 and the depth {depth}')
  else:
    check(m.decoder_depth >= 1 and m.decoder_width % m.decoder_heads == 0,
          'a separate decoder needs decoder_depth >= 1 and decoder_width divisible by '
          'decoder_heads')


def check_objective(config):
  s, name = config.sddit, config.get('objective', 'edm')
  one_of(name, OBJECTIVES, 'objective')
  learn, want = config.model.learn_sigma, objective_from_config(config).learn_sigma
  check(learn == want,
        f"model.learn_sigma={learn} does not fit objective={name!r}: only 'ddpm' has "
        f'variance channels (its bound term trains them); pass --config.model.learn_sigma={want}')
  if name == 'flow':
    one_of(config.flow.t_distribution, flow.T_DISTRIBUTIONS, 'flow.t_distribution')
    check(config.flow.t_std > 0, f'flow.t_std must be > 0, got {config.flow.t_std}')
  check(0.0 <= s.mask_ratio < 1.0, f'sddit.mask_ratio must be in [0, 1), got {s.mask_ratio}')
  check(s.dis_weight >= 0, f'sddit.dis_weight must be >= 0, got {s.dis_weight}')
  final = s.get('final_phase_dis_weight')
  if final is not None:
    check(final >= 0, f'sddit.final_phase_dis_weight must be >= 0, got {final}')
    check(config.final_phase.fraction > 0,
          'sddit.final_phase_dis_weight applies to the final phase, and there is none: set '
          '--config.final_phase.fraction=0.1 (say) or drop it')
    check(s.dis_weight > 0 or final == 0,
          'sddit.final_phase_dis_weight > 0 needs a teacher, which sddit.dis_weight=0 leaves '
          'out; set sddit.dis_weight > 0 too')
  one_of(s.teacher_sigma, TEACHER_SIGMA_POLICIES, 'sddit.teacher_sigma')
  one_of(s.gen_loss_tokens, GEN_LOSS_TOKENS, 'sddit.gen_loss_tokens')
  check(not (s.gen_loss_tokens == 'visible' and s.mask_ratio == 0 and s.masked_recon_weight),
        'sddit.masked_recon_weight needs a mask: set sddit.mask_ratio > 0')
  if s.dis_weight > 0:
    check_discrimination(config)
  check_sampler(config)


def _in_range(value, low, high, field: str, example):
  """low <= value <= high, else one line naming the field and the range."""
  check(isinstance(value, (int, float)) and not isinstance(value, bool) and
        low <= value <= high,
        f'{field} must be in [{low}, {high}], got {value!r}; pass --config.{field}={example}')


def check_discrimination(config):
  """The teacher's temperatures, momenta and projection head."""
  s = config.sddit
  for field, example in (('student_temp', 0.1), ('teacher_temp', 0.04),
                         ('teacher_temp_warmup_start', 0.04)):
    _in_range(s[field], 1e-4, 10.0, f'sddit.{field}', example)
  check(isinstance(s.teacher_temp_warmup_steps, int) and s.teacher_temp_warmup_steps >= 0,
        f'sddit.teacher_temp_warmup_steps must be an integer >= 0, got '
        f'{s.teacher_temp_warmup_steps!r}; pass --config.sddit.teacher_temp_warmup_steps=0')
  for field, example in (('center_momentum', 0.9), ('teacher_momentum', 0.996),
                         ('teacher_momentum_final', 1.0)):
    _in_range(s[field], 0.0, 1.0, f'sddit.{field}', example)
  for field in ('hidden', 'bottleneck', 'out_dim', 'num_layers'):
    positive_int(config.model.head[field], f'model.head.{field}')
  check(config.model.head.out_dim >= 2,
        'model.head.out_dim must be >= 2 prototypes; pass --config.model.head.out_dim=1024')


def check_sampler(config):
  """The sampler is the objective's (its parameterization and one of its solvers), and its
  respacing and guided channels fit the model."""
  s, m = config.sample, config.model
  objective = objective_from_config(config)
  if s.parameterization:
    one_of(s.parameterization, PARAMETERIZATIONS, 'sample.parameterization')
    check(s.parameterization == objective.name,
          f'sample.parameterization={s.parameterization!r} does not belong to '
          f'objective={objective.name!r}; pass --config.sample.parameterization='
          f'{objective.name} (or leave it empty: the objective\'s)')
  check(not s.solver or s.solver in objective.solvers,
        f'sample.solver={s.solver!r} does not belong to objective={objective.name!r} (its '
        f'samplers: {", ".join(objective.solvers)}); pass --config.sample.solver='
        f'{objective.default_solver}')
  channels = s.guidance_channels
  check(isinstance(channels, int) and not isinstance(channels, bool)
        and 0 <= channels <= m.in_channels,
        f'sample.guidance_channels={channels!r} must be an integer from 0 (all) to '
        f'model.in_channels={m.in_channels} (the model\'s own channels; a learned variance is '
        'never guided)')
  if objective.name == 'ddpm':
    try:
      respaced_schedule(s.respacing)
    except ValueError as err:
      raise ConfigError(f'sample.respacing: {err}') from None
  else:  # EDM's Karras grid and flow's time grid take their step count from sample.steps
    minimum = 2 if sampler_of(config) == ('flow', 'euler_maruyama') else 1
    check(isinstance(s.steps, int) and s.steps >= minimum,
          f'sample.steps must be an integer >= {minimum}, got {s.steps!r}')


def check_data(config):
  m = config.model
  one_of(config.data.name, TRAIN_SOURCES, 'data.name')
  if config.data.name in ('digits', 'fashion_mnist'):
    check(m.num_classes == 10 and m.in_channels == 1 and m.input_size == config.data.image_size,
          f'the {config.data.name} data needs model.num_classes=10, model.in_channels=1 and '
          'model.input_size=data.image_size')
    if config.data.name == 'fashion_mnist':
      fashion_mnist.check_dir(config.data.dir)


def check_latents(config, mode: str):
  """Latent data: the extracted set, which only training reads (so DiT's released weights
  sample without ImageNet), then the VAE of the latents."""
  if config.data.name != 'latents':
    return
  if mode == 'train':
    check_latent_set(config, config.model.num_classes)
  check_latent_vae(config)


def check_latent_vae(config):
  """The VAE of the latents, where something needs it: its scale factor (data.latent_scale=0),
  or its decoder (the classifier metric at the end of training)."""
  vae = config.sample.vae or config.data.vae_path
  needs = ('data.latent_scale=0 (the scale of the VAE)' if not config.data.latent_scale else
           'eval.metric_samples (decoded samples)' if config.eval.metric_samples else None)
  if needs is None:
    return
  check(bool(vae) and os.path.exists(vae),
        f'{needs} needs the VAE of the latents, but sample.vae={vae!r} '
        f'{"does not exist" if vae else "is not set"}; pass --config.sample.vae=<its folder>')
  if config.eval.metric_samples:
    check(image_set(config) is not None,
          f'eval.metric_samples={config.eval.metric_samples}: there is no classifier for '
          f'{config.data.extract.source} latents; pass --config.eval.metric_samples=0')
    if image_set(config) == 'fashion_mnist':  # the classifier's reference images
      fashion_mnist.check_dir(images_dir(config))


def _weight_shapes(path: str) -> dict:
  """{name: shape} of a safetensors file, from its header alone."""
  with safe_open(path, framework='numpy') as f:
    return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def check_dit_weights(config):
  """init.dit_weights, when set: a facebookresearch/DiT safetensors file whose shapes are the
  configured model's (only its header is read; pickles are refused, never unpickled)."""
  path = config.get('init', {}).get('dit_weights', '')
  if not path:
    return
  field = f'init.dit_weights={path!r}'
  check(not path.endswith(PICKLE_SUFFIXES),
        f'{field} is a pickle checkpoint, which is never loaded (unpickling runs arbitrary '
        f'code); convert it to safetensors: {CONVERT_ONE_LINER}')
  check(os.path.isfile(path), f'{field}: no such file; pass --config.init.dit_weights=FILE')
  try:
    shapes = _weight_shapes(path)
  except Exception as err:  # pylint: disable=broad-except
    raise ConfigError(f'{field} is not a safetensors file ({type(err).__name__}); convert it: '
                      f'{CONVERT_ONE_LINER}') from None
  m = config.model
  depth, width, _, patch = dit_sizes(m)
  want = {'x_embedder.proj.weight': (width, m.in_channels, patch, patch),
          'y_embedder.embedding_table.weight': (m.num_classes + 1, width)}
  got_depth = len({k.split('.')[1] for k in shapes if k.startswith('blocks.')})
  wrong = [f'{k} {shapes.get(k)} (want {v})' for k, v in want.items() if shapes.get(k) != v]
  if got_depth != depth:
    wrong.append(f'{got_depth} blocks (want {depth})')
  check(not wrong, f'{field} does not fit model {m.name} (width {width}, depth {depth}, '
                   f'{m.in_channels} channels, {m.num_classes} classes): {"; ".join(wrong)}')


def check_released_dit(config):
  """init.dit_weights sampled as they are: every parameter the sampler uses must come from
  the file (DiT's layout: the stack's own blocks decode; its output channels) under DiT's
  sampler. (A teacher's projection head stays fresh, but sampling never runs it.)"""
  m, path = config.model, config.init.dit_weights
  _, width, _, patch = dit_sizes(m)
  check(m.decoder_mode == 'split' and sampler_of(config)[0] == 'ddpm',
        f'no checkpoint in the workdir, and init.dit_weights={path!r} fills only part of this '
        "model or needs objective='ddpm': sample DiT's released weights with "
        'configs/dit_xl_official.py, or train first')
  got = _weight_shapes(path).get('final_layer.linear.weight')  # a valid file: check_config
  want = (patch * patch * m.in_channels * (2 if m.learn_sigma else 1), width)
  check(got == want, f'init.dit_weights={path!r}: final_layer.linear.weight is {got}, the '
                     f'model needs {want}; DiT\'s released weights learn sigma '
                     '(model.learn_sigma=True)')


def check_config(config):
  for part in (check_model, check_objective, check_data, check_dit_weights):
    part(config)


# ----------------------------------------------------------------------------- run modes


def _check_vae(config):
  if is_pixel_space(config.model.in_channels):
    return
  # the task decodes with sample.vae, else data.vae_path (the VAE of the latents)
  path = config.sample.vae or config.data.vae_path
  field = 'sample.vae' if config.sample.vae else 'data.vae_path'
  check(bool(path), f'model.in_channels={config.model.in_channels}: latent samples need a VAE '
                    'decoder; pass --config.sample.vae=DIR (a diffusers AutoencoderKL folder)')
  for name in ('config.json', 'diffusion_pytorch_model.safetensors'):
    check(os.path.isfile(os.path.join(path, name)),
          f'{field}={path!r} holds no {name}; pass a diffusers AutoencoderKL folder '
          '(see docs/weights.md)')


def _check_sampling(config, num_devices):
  s = config.sample
  one_of(s.labels, LABEL_MODES, 'sample.labels')
  positive_int(s.batch_size, 'sample.batch_size')
  if num_devices is not None:
    dp = mesh_lib.resolved_data_parallel_size(config.mesh, num_devices)
    check(s.batch_size % dp == 0, f'sample.batch_size {s.batch_size} is not divisible by the '
                                  f'data-parallel size {dp}; change --config.sample.batch_size')
  _check_vae(config)


def export_output(config, workdir: str) -> str:
  """Where --mode=export writes: export.output, or <workdir>/diffusers_dit."""
  return config.export.output or os.path.join(workdir, 'diffusers_dit')


def check_mode(config, mode: str, workdir: str, num_devices):
  """The files and sizes --mode=sample, --mode=eval and FID during training need."""
  s, ev = config.sample, config.eval
  weights_hint = 'pytorch-fid weights as safetensors, see docs/evaluation.md'
  ref_hint = 'an ADM reference batch .npz, see docs/evaluation.md'
  fid_in_training = mode == 'train' and ev.fid_every > 0
  check_latents(config, mode)
  if mode == 'sample' or fid_in_training:
    _check_sampling(config, num_devices)
  if mode == 'sample':
    check(s.num_samples > 0, f'sample.num_samples must be positive, got {s.num_samples}')
    try:
      has_checkpoint(workdir)
    except ConfigError:
      if not config.init.dit_weights:
        raise
      check_released_dit(config)  # a workdir without a checkpoint samples these weights
    output = default_output(config, workdir)
    check(not os.path.exists(output), f'{output} exists and would be overwritten; remove it or '
                                      'pass --config.sample.output=PATH')
  if mode == 'export':
    has_checkpoint(workdir)   # the EMA params of its newest step are what is exported
    output = export_output(config, workdir)
    check(not os.path.exists(os.path.join(output, 'config.json')),
          f'{output} already holds an export, which would be overwritten; remove it or pass '
          '--config.export.output=DIR')
  if fid_in_training:
    check(ev.fid_samples >= 2 and ev.fid_samples % s.batch_size == 0,
          f'eval.fid_samples {ev.fid_samples} must be a multiple of sample.batch_size '
          f'{s.batch_size}')
  # an image set with its own classifier is scored without Inception unless a reference is set
  inception_eval = mode == 'eval' and (ev.reference_npz or image_set(config) is None)
  if mode == 'eval' and image_set(config) == 'fashion_mnist':
    fashion_mnist.check_dir(images_dir(config))
  if inception_eval or fid_in_training:
    existing_file(ev.inception_weights, 'eval.inception_weights', weights_hint)
    existing_file(ev.reference_npz, 'eval.reference_npz', ref_hint)
  if mode == 'eval':
    samples = ev.samples_npz or default_output(config, workdir)
    check(os.path.isfile(samples), f'samples file {samples} does not exist; write it with '
                                   '--mode=sample or pass --config.eval.samples_npz=PATH')
