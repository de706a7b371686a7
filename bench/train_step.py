"""Steady-state train-step time of DiT / SD-DiT, optionally beside PyTorch in the same run.

  python bench/train_step.py --model=DiT-S/2 --method=sddit --batch=8
  python bench/train_step.py --model=DiT-S/2 --method=dit --batch=8 --vs-torch
  python bench/train_step.py --method=diffdis --size=tiny --batch=8
  python bench/train_step.py --method=diffdis --size=sd15 --batch=1 --latent=32

Ours: the real jitted train step of the package (EDM loss, AdamW, sampling EMA and, for
sddit, the masked student, the teacher and its EMA), float32, on ImageNet-256-shaped latents
(32x32x4, 1000 classes), random data. Theirs (--vs-torch): diffusers' DiTTransformer2DModel of
the same shape, eager PyTorch, forward + MSE loss + backward + AdamW step, float32. Prints one
JSON line; `ratio_vs_torch` is ours / theirs in time per step (below 1: ours is faster).

--method=diffdis: the DiffDis train step (generation + alignment pass) of the tiny demo UNet
or SD 1.5's UNet (77 x 768 context, 768-d query), beside the generation-only baseline
(align_mode none: the plain SD UNet step) in the same run, and zero-shot classification
throughput (DDIM over the text query with guidance, `diffdis.zeroshot.steps` steps).
"""
from __future__ import annotations

import argparse
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

from configs import common, diffdis_common  # noqa: E402
from diffdis_jax import build  # noqa: E402
from diffdis_jax.nn.dit import parse_dit_name  # noqa: E402
from diffdis_jax.objectives import get_objective  # noqa: E402
from diffdis_jax.train import step as step_lib  # noqa: E402


def bench_config(model: str, method: str, batch: int):
  c = common.get_base_config()
  c.model.name = model
  c.batch_size = batch
  c.data.name = 'digits'  # not read: the bench feeds random latents
  if method == 'dit':
    c.model.decoder_mode, c.model.decoder_depth = 'split', 0
    c.sddit.dis_weight, c.sddit.mask_ratio = 0.0, 0.0
  elif method != 'sddit':
    raise SystemExit(f'--method must be sddit or dit, got {method!r}')
  return c


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
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def time_zeroshot(config, state, steps: int, warmup: int):
  """Images per second of zero-shot classification's query prediction (the DDIM loop)."""
  from diffdis_jax.eval.zeroshot import make_query_predictor  # pylint: disable=g-import-not-at-top
  model = build.build_model(config)
  predict = jax.jit(make_query_predictor(model, config))
  images = random_batch(config)['image']
  null_c = jnp.zeros((config.diffdis.context_length, config.diffdis.context_dim), jnp.float32)
  rng = jax.random.PRNGKey(0)
  seconds = _median_time(lambda: predict(state.params, images, null_c, rng), steps, warmup)
  return len(images) / seconds


def time_ours(config, steps: int, warmup: int, return_state: bool = False,
              compiler_options=None):
  model = build.build_model(config)
  objective = get_objective(config.method)
  tx = step_lib.make_optimizer(config)
  init = step_lib.make_init_fn(model, tx, objective, config)
  state = jax.jit(lambda r: nn.unbox(init(r)))(jax.random.PRNGKey(0))
  batch = random_batch(config)
  t0 = time.perf_counter()
  step = jax.jit(step_lib.make_train_step(model, tx, objective, config),
                 donate_argnums=0).lower(state, batch).compile(compiler_options)
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  if return_state:
    return float(np.median(times)), compile_s, state
  return float(np.median(times)), compile_s


def compiler_options(args):
  if args.xla_opt_level < 0:
    return None
  return {'xla_backend_optimization_level': args.xla_opt_level}


def bench_diffdis(args):
  """DiffDis step vs the generation-only step in one run, and zero-shot images/s."""
  record = {'bench': 'train_step', 'method': 'diffdis', 'size': args.size, 'batch': args.batch,
            'xla_opt_level': args.xla_opt_level}
  full = diffdis_bench_config(args.size, args.batch, args.latent, 'diffusion')
  step_s, compile_s, state = time_ours(full, args.steps, args.warmup, return_state=True,
                                       compiler_options=compiler_options(args))
  record.update(latent=full.model.input_size, step_s=round(step_s, 4),
                compile_s=round(compile_s, 1))
  zs = time_zeroshot(full, state, args.steps, args.warmup)
  record.update(zeroshot_images_per_s=round(zs, 2), zeroshot_steps=full.diffdis.zeroshot.steps,
                zeroshot_guidance=full.diffdis.zeroshot.guidance)
  del state
  gen_s, gen_compile_s = time_ours(diffdis_bench_config(args.size, args.batch, args.latent,
                                                        'none'), args.steps, args.warmup,
                                 compiler_options=compiler_options(args))
  record.update(gen_only_step_s=round(gen_s, 4), gen_only_compile_s=round(gen_compile_s, 1),
                ratio_vs_gen_only=round(step_s / gen_s, 3))
  return record


def time_torch(config, steps: int, warmup: int):
  from diffdis_jax.torch_peers import prepare_torchvision  # pylint: disable=g-import-not-at-top
  prepare_torchvision()  # diffusers imports torchvision
  import torch  # pylint: disable=g-import-not-at-top
  from diffusers import DiTTransformer2DModel  # pylint: disable=g-import-not-at-top

  depth, width, heads, patch = parse_dit_name(config.model.name)
  m, b = config.model, config.batch_size
  torch.manual_seed(0)
  model = DiTTransformer2DModel(
      num_attention_heads=heads, attention_head_dim=width // heads, in_channels=m.in_channels,
      out_channels=m.in_channels, num_layers=depth, sample_size=m.input_size, patch_size=patch,
      num_embeds_ada_norm=m.num_classes)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
  x = torch.randn(b, m.in_channels, m.input_size, m.input_size)
  t = torch.randint(0, 1000, (b,))
  y = torch.randint(0, m.num_classes, (b,))

  def step():
    opt.zero_grad(set_to_none=True)
    out = model(x, timestep=t, class_labels=y).sample
    loss = torch.nn.functional.mse_loss(out, x)
    loss.backward()
    opt.step()

  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), torch.__version__, torch.get_num_threads()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='DiT-S/2')
  parser.add_argument('--method', default='sddit', choices=['sddit', 'dit', 'diffdis'])
  parser.add_argument('--size', default='tiny', help="diffdis: 'tiny' (demo) or 'sd15'")
  parser.add_argument('--latent', type=int, default=0, help='diffdis: latent side (0: config)')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--vs-torch', action='store_true')
  parser.add_argument('--xla-opt-level', type=int, default=-1,
                      help="XLA's backend optimisation level for our step (-1: its default; "
                           '0: what the tests use, a quicker compile, a slower step)')
  args = parser.parse_args()

  device = jax.devices()[0]
  machine = {'backend': jax.default_backend(),
             'device': getattr(device, 'device_kind', str(device)) or platform.processor(),
             'jax': jax.__version__, 'cpu_count': os.cpu_count()}
  if args.method == 'diffdis':
    print(json.dumps({**bench_diffdis(args), **machine}))
    return
  config = bench_config(args.model, args.method, args.batch)
  step_s, compile_s = time_ours(config, args.steps, args.warmup,
                                compiler_options=compiler_options(args))
  record = {
      'bench': 'train_step', 'model': args.model, 'method': args.method, 'batch': args.batch,
      'step_s': round(step_s, 4), 'images_per_s': round(args.batch / step_s, 2),
      'compile_s': round(compile_s, 1), **machine,
  }
  if args.vs_torch:
    torch_s, torch_version, threads = time_torch(config, args.steps, args.warmup)
    record.update(torch_step_s=round(torch_s, 4), torch=torch_version, torch_threads=threads,
                  ratio_vs_torch=round(step_s / torch_s, 3))
  print(json.dumps(record))


if __name__ == '__main__':
  main()
