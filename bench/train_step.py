"""Steady-state train-step time of DiT / SD-DiT / DiffDis, optionally beside PyTorch in the same run.

  python bench/train_step.py --model=DiT-S/2 --method=sddit --batch=8
  python bench/train_step.py --model=DiT-S/2 --method=dit --batch=8 --vs-torch --sample
  python bench/train_step.py --config=configs/sddit_s.py --method=sddit --batch=8
  python bench/train_step.py --model=DiT-XL/2 --method=dit --batch=64 --dtype=bfloat16 \
      --attention=cudnn --vs-torch                                  # on a GPU
  python bench/train_step.py --method=diffdis --size=tiny --batch=8 --vs-torch
  python bench/train_step.py --method=diffdis --size=sd15 --batch=1 --latent=32 --optimizer=sgd
  python bench/train_step.py --tiny [--method=...]       # smoke run (bench/tiny.py)

Ours: the real jitted train step of the package (EDM loss, AdamW, sampling EMA and, for
sddit, the masked student, the teacher and its EMA), on ImageNet-256-shaped latents (32x32x4,
1000 classes), random data, compiled ahead of time from abstract shapes. Theirs (--vs-torch):
diffusers' DiTTransformer2DModel of the same shape, eager PyTorch, forward + MSE loss +
backward + optimizer step (bench/peers.py; on the GPU with SDPA and, for --dtype=bfloat16,
autocast). Prints one
JSON line: step_s, images_per_s, compile_s, XLA's peak-memory estimate and FLOP count of the
compiled step, the analytic model FLOPs per training image (bench/costs.py), the achieved
model TFLOP/s and MFU against the device's bf16 peak (where bench/costs.py knows it), and
`ratio_vs_torch`, ours / theirs in time per step (below 1: ours is faster). --sample adds
EDM sampling images/s (Heun, --sample-steps steps (18), 2 x steps - 1 network evaluations,
guidance 1.5); --sample-ddpm also times DiT's DDPM sampler beside it on the same model at the
same step count and guidance (ancestral, learned variance, respacing 'steps', 3 guided
channels: one evaluation a step; the model then has learn_sigma's 8 output channels).

--method=diffdis: the DiffDis train step (generation + alignment pass) of the tiny demo UNet
or SD 1.5's UNet (77 x 768 context, 768-d query), beside the generation-only baseline
(align_mode none: the plain SD UNet step) in the same run, and zero-shot classification
throughput (DDIM over the text query with guidance, `diffdis.zeroshot.steps` steps).
With --vs-torch, diffusers' UNet2DConditionModel of the same UNet runs the plain SD step
beside it, and `ratio_vs_torch` is our generation-only step over that one. --method=unet
times that generation-only step (and with --vs-torch its peer) alone.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import importlib.util
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import costs  # noqa: E402  (bench/costs.py)
import peers  # noqa: E402  (bench/peers.py)
import timing  # noqa: E402  (bench/timing.py)
import tiny  # noqa: E402  (bench/tiny.py)
from configs import common, diffdis_common  # noqa: E402
from diffdis_jax.core.overrides import apply_overrides  # noqa: E402
from diffdis_jax.eval.diffdis_sampler import make_query_predictor  # noqa: E402
from diffdis_jax.eval.sddit_sampler import make_sample_fn  # noqa: E402
from diffdis_jax.tasks import make_task  # noqa: E402
from diffdis_jax.train import step as step_lib  # noqa: E402


def config_from_file(path: str):
  """get_config() of a config file ('configs/sddit_s.py'), as launch/main.py's --config."""
  if not os.path.isfile(path):
    raise SystemExit(f'--config: no such file {path!r}; e.g. --config=configs/sddit_s.py')
  spec = importlib.util.spec_from_file_location('bench_config_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def bench_config(model: str, method: str, batch: int, config_file: str = ''):
  """The base config for `model` (or a config file's own SD-DiT layout and head, when
  `config_file` is given), at `batch`; method 'dit' is its DiT counterpart."""
  if method not in ('sddit', 'dit'):
    raise SystemExit(f'--method must be sddit or dit, got {method!r}')
  c = config_from_file(config_file) if config_file else common.get_base_config()
  if not config_file:
    c.model.name = model
  c.batch_size = batch
  c.data.name = 'digits'  # not read: the bench feeds random latents
  return apply_overrides(c, common.DIT_BASELINE) if method == 'dit' else c


def diffdis_bench_config(size: str, batch: int, latent: int, align_mode: str):
  c = diffdis_common.diffdis_config()       # SD 1.5's UNet, 77 x 768 context
  if size == 'tiny':                        # configs/demo_diffdis.py's UNet and text widths
    from configs import demo_diffdis  # pylint: disable=g-import-not-at-top
    c = demo_diffdis.get_config()
  elif size != 'sd15':
    raise SystemExit(f'--size must be tiny or sd15, got {size!r}')
  c.batch_size = batch
  c.model.input_size = latent or c.model.input_size
  c.diffdis.align_mode = align_mode
  return c


def random_batch(config):
  m, b = config.model, config.batch_size
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  batch = {'image': normal(b, m.input_size, m.input_size, m.in_channels)}
  if config.method == 'diffdis':
    d = config.diffdis
    query = normal(b, d.text_dim)
    batch.update(context=normal(b, d.context_length, d.context_dim),
                 query=query / jnp.linalg.norm(query, axis=-1, keepdims=True),
                 label=jnp.asarray(rng.integers(0, 10, b), jnp.int32))
  else:
    batch['label'] = jnp.asarray(rng.integers(0, m.num_classes, b), jnp.int32)
  return batch


def _median_time(fn, steps: int, warmup: int):
  return timing.median_seconds(fn, steps, warmup, block=jax.block_until_ready)


def time_zeroshot(config, state, steps: int, warmup: int):
  """Images per second of zero-shot classification's query prediction (the DDIM loop)."""
  model = make_task(config).build_model()
  predict = jax.jit(make_query_predictor(model, config))
  images = random_batch(config)['image']
  null_c = jnp.zeros((config.diffdis.context_length, config.diffdis.context_dim), jnp.float32)
  rng = jax.random.PRNGKey(0)
  seconds = _median_time(lambda: predict(state.params, images, null_c, rng), steps, warmup)
  return len(images) / seconds


def make_optimizer(config, name: str):
  """The run's AdamW, or plain SGD (no optimizer state) where the AdamW moments do not fit."""
  if name == 'sgd':
    return optax.sgd(config.optim.lr)
  return step_lib.make_optimizer(config)


def _return_freed_heap():
  """Hand the heap a compile freed back to the OS before the state is allocated: glibc keeps
  it, and SD 1.5's DiffDis compile peaks above 21 GB of a 24 GB host (docs/results.md)."""
  try:
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):  # not glibc: nothing to do
    pass


def time_ours(config, steps: int, warmup: int, return_state: bool = False,
              compiler_options=None, optimizer: str = 'adamw'):
  """Step time of the package's train step, compiled ahead of time from abstract shapes.

  The step is compiled before the state exists, so the compile's memory and the state's
  never add up. Returns a dict:
  step_s, compile_s, XLA's FLOP count and memory analysis (bench/costs.py), and the state
  when `return_state`.
  """
  task = make_task(config)
  model = task.build_model()
  objective = task.objective
  tx = make_optimizer(config, optimizer)
  init = jax.jit(lambda r: nn.unbox(step_lib.make_init_fn(model, tx, objective, config,
                                                         task.init_params)(r)))
  rng = jax.random.PRNGKey(0)
  batch = random_batch(config)
  t0 = time.perf_counter()
  step = jax.jit(step_lib.make_train_step(model, tx, objective, config),
                 donate_argnums=0).lower(jax.eval_shape(init, rng), batch).compile(
                     compiler_options)
  result = {'compile_s': time.perf_counter() - t0, **costs.compiled_stats(step)}
  print(f'compiled: {json.dumps(result)}', file=sys.stderr, flush=True)
  _return_freed_heap()
  holder = {'state': init(rng)}

  def one_step():  # the state is donated: each step consumes the previous one's
    holder['state'], metrics = step(holder['state'], batch)
    return metrics

  result['step_s'] = _median_time(one_step, steps, warmup)
  if return_state:
    result['state'] = holder['state']
  return result


def compiler_options(args):
  if args.xla_opt_level < 0:
    return None
  return {'xla_backend_optimization_level': args.xla_opt_level}


def _rounded(result: dict, prefix: str = '') -> dict:
  """time_ours's dict as record fields: seconds rounded, the memory analysis summarised."""
  out = {f'{prefix}step_s': round(result['step_s'], 4),
         f'{prefix}compile_s': round(result['compile_s'], 1)}
  if 'peak_bytes_estimate' in result:
    out[f'{prefix}peak_bytes_estimate'] = result['peak_bytes_estimate']
  if 'xla_flops' in result:
    out[f'{prefix}xla_flops_per_step'] = result['xla_flops']
  return out


def bench_diffdis(args):
  """DiffDis step vs the generation-only step in one run, and zero-shot images/s."""
  record = {'bench': 'train_step', 'method': 'diffdis', 'size': args.size, 'batch': args.batch,
            **_flag_fields(args)}
  options = dict(compiler_options=compiler_options(args), optimizer=args.optimizer)
  config = lambda align: apply_flags(
      diffdis_bench_config(args.size, args.batch, args.latent, align), args)
  full = config('diffusion')
  ours = time_ours(full, args.steps, args.warmup, return_state=True, **options)
  record.update(latent=full.model.input_size, **_rounded(ours))
  state = ours.pop('state')
  zs = time_zeroshot(full, state, args.steps, args.warmup)
  record.update(zeroshot_images_per_s=round(zs, 2), zeroshot_steps=full.diffdis.zeroshot.steps,
                zeroshot_guidance=full.diffdis.zeroshot.guidance)
  del state
  gen_config = config('none')
  gen = time_ours(gen_config, args.steps, args.warmup, **options)
  record.update(**_rounded(gen, 'gen_only_'),
                ratio_vs_gen_only=round(ours['step_s'] / gen['step_s'], 3))
  if args.vs_torch:  # the peer of the generation-only step: the plain SD UNet step
    record.update(_vs_torch(peers.unet_step(gen_config, args.steps, args.warmup, args.dtype,
                                            args.optimizer), gen['step_s']))
  return record


def bench_unet(args):
  """The plain SD UNet step alone (DiffDis' generation-only baseline), and its torch peer."""
  config = apply_flags(diffdis_bench_config(args.size, args.batch, args.latent, 'none'), args)
  ours = time_ours(config, args.steps, args.warmup, compiler_options=compiler_options(args),
                   optimizer=args.optimizer)
  record = {'bench': 'train_step', 'method': 'unet', 'size': args.size, 'batch': args.batch,
            'latent': config.model.input_size, **_flag_fields(args), **_rounded(ours)}
  if args.vs_torch:
    record.update(_vs_torch(peers.unet_step(config, args.steps, args.warmup, args.dtype,
                                            args.optimizer), ours['step_s']))
  return record


def time_sampling(config, steps: int, warmup: int):
  """Images/s of class-conditional sampling with config.sample (EDM or DiT's DDPM)."""
  task = make_task(config)
  model = task.build_model()
  init_params = task.init_params
  params = jax.jit(lambda r: nn.unbox(init_params(model, r)))(jax.random.PRNGKey(0))
  batch = random_batch(config)
  sample = jax.jit(make_sample_fn(model, config))
  seconds = _median_time(lambda: sample(params, batch['image'], batch['label']), steps, warmup)
  return config.batch_size / seconds


def time_samplers(config, sample_steps: int, steps: int, warmup: int, ddpm: bool) -> dict:
  """EDM (Heun) sampling, and with `ddpm` DiT's DDPM sampler, at the same model, step count
  and guidance (1.5)."""
  edm = copy.deepcopy(config)
  edm.sample.steps, edm.sample.guidance = sample_steps, 1.5
  edm_rate = time_sampling(edm, steps, warmup)
  record = {'sample_images_per_s': round(edm_rate, 3), 'sample_steps': sample_steps,
            'sample_guidance': 1.5, 'sample_evals': 2 * sample_steps - 1}
  if ddpm:
    dit = apply_overrides(copy.deepcopy(edm), {
        'objective': 'ddpm', 'model.learn_sigma': True, 'sample.parameterization': 'ddpm',
        'sample.solver': 'ancestral', 'sample.respacing': str(sample_steps),
        'sample.guidance_channels': 3})
    rate = time_sampling(dit, steps, warmup)
    record.update(ddpm_sample_images_per_s=round(rate, 3), ddpm_sample_evals=sample_steps,
                  ddpm_over_edm_images_per_s=round(rate / edm_rate, 3))
  return record


def _flag_fields(args) -> dict:
  """The record fields that say which of the bench's settings a measurement ran under."""
  return {'dtype': args.dtype, 'remat': args.remat, 'attention': args.attention,
          'conv': args.conv, 'xla_opt_level': args.xla_opt_level, 'optimizer': args.optimizer}


def apply_flags(config, args):
  """The bench's --dtype, --remat, --attention, (UNet models) --conv and (sddit) --mask-ratio
  on a config; bench/profile_step.py shares it, so every flag means the same in both."""
  if args.mask_ratio is not None:
    if args.method != 'sddit' or not 0 <= args.mask_ratio < 1:
      raise SystemExit(f'--mask-ratio applies to --method=sddit and lies in [0, 1); got '
                       f'{args.mask_ratio} with --method={args.method}')
    config.sddit.mask_ratio = args.mask_ratio
  config.compute_dtype, config.model.remat = args.dtype, args.remat
  config.model.attention_impl = args.attention
  if 'conv_impl' in config.model:
    config.model.conv_impl = None if args.conv == 'auto' else args.conv
  return config


def _vs_torch(peer, our_step_s: float) -> dict:
  """Record fields of a peer's (seconds, torch version, threads) beside our step time."""
  torch_s, version, threads = peer
  return {'torch_step_s': round(torch_s, 4), 'torch': version, 'torch_threads': threads,
          'ratio_vs_torch': round(our_step_s / torch_s, 3)}


def argument_parser(description: str) -> argparse.ArgumentParser:
  """The bench's flags: what to build, how big, and the settings it runs under."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--model', default='DiT-S/2')
  parser.add_argument('--config', default='',
                      help='dit/sddit: a config file whose model (and SD-DiT layout and head) '
                           'to time instead of --model with the base defaults, e.g. '
                           'configs/sddit_s.py')
  parser.add_argument('--method', default='sddit', choices=['sddit', 'dit', 'diffdis', 'unet'])
  parser.add_argument('--size', default='tiny', help="diffdis, unet: 'tiny' (demo) or 'sd15'")
  parser.add_argument('--latent', type=int, default=0,
                      help='diffdis, unet: latent side (0: config)')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                      help='compute dtype (parameters stay float32); torch: autocast')
  parser.add_argument('--attention', default=None,
                      help='model.attention_impl: einsum, xla, cudnn or splash (TPU); '
                      'default: per backend')
  parser.add_argument('--conv', default='auto', choices=['auto', 'xla', 'im2col'],
                      help='diffdis, unet: model.conv_impl (auto: by backend and shape, '
                           'nn/convolution.py)')
  parser.add_argument('--remat', default='none', choices=['none', 'full', 'dots'],
                      help='model.remat: what each block keeps for its backward')
  parser.add_argument('--optimizer', default='adamw', choices=['adamw', 'sgd'],
                      help="sgd: no optimizer state, where AdamW's two moments do not fit")
  parser.add_argument('--mask-ratio', type=float, default=None,
                      help="sddit: sddit.mask_ratio (default: the config's, 0.2)")
  parser.add_argument('--sample', action='store_true',
                      help='dit/sddit: also time EDM sampling (Heun, guidance 1.5)')
  parser.add_argument('--sample-ddpm', action='store_true',
                      help="dit/sddit: --sample and DiT's DDPM sampler beside it, at the same "
                           'model, step count and guidance')
  parser.add_argument('--sample-steps', type=int, default=18,
                      help='--sample, --sample-ddpm: steps of each sampler')
  parser.add_argument('--vs-torch', action='store_true')
  parser.add_argument('--xla-opt-level', type=int, default=-1,
                      help="XLA's backend optimisation level for our step (-1: its default; "
                           '0: what the tests use, a quicker compile, a slower step)')
  return parser


# --tiny: one untimed and one timed step of the quickest compile; dit/sddit shrink the model
TINY = dict(batch=2, steps=1, warmup=1, xla_opt_level=0, sample_steps=2)


def main(argv=None):
  args = tiny.parse_args(argument_parser(__doc__.splitlines()[0]), argv, **TINY)
  if args.vs_torch:  # the peer shares the GPU: without this JAX takes 75% of it at start
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

  device = jax.devices()[0]
  kind = getattr(device, 'device_kind', str(device))
  machine = {'backend': jax.default_backend(), 'device': kind or platform.processor(),
             'jax': jax.__version__, 'cpu_count': os.cpu_count()}
  if args.method == 'diffdis':
    print(json.dumps({**bench_diffdis(args), **machine}))
    return
  if args.method == 'unet':
    print(json.dumps({**bench_unet(args), **machine}))
    return
  config = apply_flags(bench_config(args.model, args.method, args.batch, args.config), args)
  if args.tiny:
    config = tiny.shrink_dit(config)
  ours = time_ours(config, args.steps, args.warmup, compiler_options=compiler_options(args),
                   optimizer=args.optimizer)
  flops = costs.sddit_flops(make_task(config).build_model(), config)
  images_per_s = args.batch / ours['step_s']
  peak = costs.peak_flops(kind) if args.dtype == 'bfloat16' else None
  record = {
      'bench': 'train_step', 'model': config.model.name, 'config': args.config or None,
      'method': args.method, 'batch': args.batch,
      'mask_ratio': config.sddit.mask_ratio, **_flag_fields(args), **_rounded(ours),
      'images_per_s': round(images_per_s, 2),
      'model_flops_per_image': flops['train_flops_per_image'],
      'model_tflops_per_s': round(flops['train_flops_per_image'] * images_per_s / 1e12, 3),
      'mfu': round(flops['train_flops_per_image'] * images_per_s / peak, 4) if peak else None,
      **machine,
  }
  if args.sample or args.sample_ddpm:
    record.update(time_samplers(config, args.sample_steps, args.steps, args.warmup,
                                ddpm=args.sample_ddpm))
  if args.vs_torch:
    record.update(_vs_torch(peers.dit_step(config, args.steps, args.warmup, args.dtype,
                                           args.optimizer), ours['step_s']))
  print(json.dumps(record))


if __name__ == '__main__':
  main()
