"""Forward time of our SD components against the PyTorch peers, in the same run.

  python bench/forward.py --model=unet-sd15 --vs-torch --batch=1 --resolution=256
  python bench/forward.py --model=vae-sd --vs-torch
  python bench/forward.py --model=clip-l --vs-torch --batch=8
  python bench/forward.py --tiny [--model=...]    # smoke run (bench/tiny.py): --small CLIP

Prints one JSON line per measurement (UNet: one noise prediction; VAE: encode and decode
separately; CLIP: one encoding of 77 tokens) with our steady-state time (jitted, after a
compile-and-warm-up call), the peer's (diffusers / transformers, `torch.inference_mode`),
and the ratio ours/theirs (below 1: we are faster). With --vs-torch our weights are the
peer's, converted through `diffdis_jax.weights`, and the line also carries the largest
absolute difference of the outputs. `--small` shrinks the widths for a quick smoke run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from diffdis_jax import weights  # noqa: E402
from diffdis_jax.torch_peers import prepare_torchvision  # noqa: E402
from diffdis_jax.weights.convert import expected_params  # noqa: E402
import timing  # noqa: E402  (bench/timing.py)
import tiny  # noqa: E402  (bench/tiny.py)

# Full-size configs, as in the SD 1.5 / SD VAE / CLIP ViT-L/14 config.json files.
UNET_SD15 = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 attention_head_dim=8, cross_attention_dim=768)
VAE_SD = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              down_block_types=('DownEncoderBlock2D',) * 4,
              up_block_types=('UpDecoderBlock2D',) * 4)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act='quick_gelu',
              eos_token_id=2)
SMALL = {
    'unet-sd15': dict(block_out_channels=(32, 64, 128, 128), attention_head_dim=4,
                      cross_attention_dim=64, norm_num_groups=16),
    'vae-sd': dict(block_out_channels=(32, 64, 64, 64), norm_num_groups=16),
    'clip-l': dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=4),
}
CONTEXT_TOKENS = 77


def time_calls(fn, iters: int, warmup: int):
  """(first call seconds, median of `iters` steady-state calls)."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  return first, timing.median_seconds(fn, iters, max(warmup - 1, 0))


def random_params(module, *example_args, seed=0):
  """Random float32 params of the right shapes without compiling `init` (speed does not
  depend on the values)."""
  rng = np.random.default_rng(seed)
  import flax
  flat = {k: jnp.asarray(rng.normal(0, 0.02, shape).astype(np.float32))
          for k, shape in expected_params(module, *example_args).items()}
  return flax.traverse_util.unflatten_dict(flat)


def build(name: str, small: bool, with_torch: bool):
  """(our module, params, torch peer or None)."""
  prepare_torchvision()  # transformers/diffusers import torchvision
  import torch
  torch.manual_seed(0)
  if name == 'unet-sd15':
    from diffusers import UNet2DConditionModel
    config = {**UNET_SD15, **(SMALL[name] if small else {})}
    peer = UNet2DConditionModel(**config).eval() if with_torch else None
    convert = weights.from_diffusers_unet
  elif name == 'vae-sd':
    from diffusers import AutoencoderKL
    config = {**VAE_SD, **(SMALL[name] if small else {})}
    peer = AutoencoderKL(**config).eval() if with_torch else None
    convert = weights.from_diffusers_vae
  else:
    from transformers import CLIPTextConfig, CLIPTextModel
    config = {**CLIP_L, **(SMALL[name] if small else {})}
    peer = CLIPTextModel(CLIPTextConfig(**config)).eval() if with_torch else None
    convert = weights.from_transformers_clip_text
  if peer is not None:
    full_config = dict(peer.config) if name != 'clip-l' else peer.config.to_dict()
    state = {k: v.detach().numpy() for k, v in peer.state_dict().items()}
    module, params = convert(full_config, state)
    return module, params, peer, config
  if name == 'unet-sd15':
    from diffdis_jax.nn.unet import UNet2DCondition
    module = UNet2DCondition(**{k: v for k, v in config.items() if k != 'cross_attention_dim'})
  elif name == 'vae-sd':
    from diffdis_jax.nn.vae import AutoencoderKL as OurVAE
    module = OurVAE(**{k: v for k, v in config.items() if not k.endswith('block_types')})
  else:
    from diffdis_jax.nn.clip_text import CLIPTextModel as OurCLIP
    module = OurCLIP(**config)
  return module, None, None, config


def measurements(args):
  """Yield (component, our fn, torch fn or None, output getters) per measurement."""
  import torch
  module, params, peer, config = build(args.model, args.small, args.vs_torch)
  rng = np.random.default_rng(0)
  b = args.batch
  if args.model == 'unet-sd15':
    side = args.resolution // 8
    x = rng.standard_normal((b, side, side, 4)).astype(np.float32)
    t = np.full((b,), 500.0, np.float32)
    ctx = rng.standard_normal((b, CONTEXT_TOKENS, config['cross_attention_dim'])).astype(
        np.float32)
    if params is None:
      params = random_params(module, x[:1], t[:1], ctx[:1])
    fn = jax.jit(lambda p, x, t, c: module.apply({'params': p}, x, t, c))
    ours = lambda: fn(params, x, t, ctx).block_until_ready()
    theirs = None if peer is None else (
        lambda: peer(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(t),
                     torch.from_numpy(ctx)).sample.permute(0, 2, 3, 1))
    yield 'unet', ours, theirs
  elif args.model == 'vae-sd':
    img = rng.uniform(-1, 1, (b, args.resolution, args.resolution, 3)).astype(np.float32)
    z = rng.standard_normal((b, args.resolution // 8, args.resolution // 8, 4)).astype(
        np.float32)
    if params is None:
      params = random_params(module, img[:1, :64, :64])
    enc = jax.jit(lambda p, x: module.apply({'params': p}, x, method='encode')[0])
    dec = jax.jit(lambda p, z: module.apply({'params': p}, z, method='decode'))
    to_torch = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy())
    yield ('encode', lambda: enc(params, img).block_until_ready(),
           None if peer is None else
           lambda: peer.encode(to_torch(img)).latent_dist.mean.permute(0, 2, 3, 1))
    yield ('decode', lambda: dec(params, z).block_until_ready(),
           None if peer is None else lambda: peer.decode(to_torch(z)).sample.permute(0, 2, 3, 1))
  else:
    ids = rng.integers(0, config['vocab_size'] - 1, (b, CONTEXT_TOKENS))
    if params is None:
      params = random_params(module, ids[:1])
    fn = jax.jit(lambda p, ids: module.apply({'params': p}, ids)['last_hidden_state'])
    yield ('text', lambda: fn(params, ids).block_until_ready(),
           None if peer is None else lambda: peer(torch.from_numpy(ids)).last_hidden_state)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  # required, but --tiny names one: argparse checks `required` before any default applies
  parser.add_argument('--model', choices=['unet-sd15', 'vae-sd', 'clip-l'],
                      help='required (--tiny: clip-l)')
  parser.add_argument('--vs-torch', action='store_true')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--resolution', type=int, default=512, help='image side in pixels')
  parser.add_argument('--small', action='store_true', help='reduced widths (smoke run)')
  parser.add_argument('--iters', type=int, default=3)
  parser.add_argument('--warmup', type=int, default=1)
  args = tiny.parse_args(parser, argv, model='clip-l', small=True, resolution=64, iters=1)
  if args.model is None:
    parser.error('the following arguments are required: --model')
  import torch
  for component, ours, theirs in measurements(args):
    compile_s, ours_s = time_calls(ours, args.iters, args.warmup)
    record = dict(bench='forward', model=args.model, component=component, batch=args.batch,
                  resolution=args.resolution, small=args.small, dtype='float32',
                  backend=jax.default_backend(), device=str(jax.devices()[0].device_kind),
                  host=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                  loadavg_1m=round(os.getloadavg()[0], 2),
                  ours_s=round(ours_s, 4), ours_first_call_s=round(compile_s, 2),
                  torch_s=None, ratio_ours_over_torch=None)
    if theirs is not None:
      with torch.inference_mode():
        _, torch_s = time_calls(theirs, args.iters, args.warmup)
        diff = float(np.max(np.abs(np.asarray(ours()) - theirs().numpy())))
      record.update(torch_s=round(torch_s, 4), ratio_ours_over_torch=round(ours_s / torch_s, 3),
                    torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
                    max_abs_diff=diff)
    print(json.dumps(record), flush=True)


if __name__ == '__main__':
  main()
