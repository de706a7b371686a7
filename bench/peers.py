"""The PyTorch peers of bench/train_step.py: diffusers' models of the same shape, trained eagerly.

Each returns (median seconds per step, torch version, torch threads). A step is forward, loss,
backward and optimizer update, without EMA or data. On a CUDA host, when our step runs on a
GPU, the peer runs there too. It uses SDPA (diffusers' default attention processor) and, for
bfloat16, autocast: the usual fast PyTorch recipe.

The peers have our models' parameter counts (tests/test_bench_peers.py), with one difference:
diffusers' DiT keeps its own copy of the timestep and class embedders in every block (0.63 M
parameters per block at DiT-S/2, 2.78 M at XL/2). The extra compute is a few small products
per image, but the optimizer updates those copies too.
"""
from __future__ import annotations

import jax

import timing  # bench/timing.py
from diffdis_jax.tasks.diffdis.model import unet_fields
from diffdis_jax.tasks.sddit.checks import dit_sizes


def _torch():
  from diffdis_jax.torch_peers import prepare_torchvision  # pylint: disable=g-import-not-at-top
  prepare_torchvision()  # diffusers imports torchvision
  import torch  # pylint: disable=g-import-not-at-top
  device = 'cuda' if jax.default_backend() == 'gpu' and torch.cuda.is_available() else 'cpu'
  torch.manual_seed(0)
  return torch, device


def _time_steps(torch, model, loss_fn, device, steps, warmup, dtype, optimizer):
  """Median seconds of `optimizer` steps on loss_fn() (the forward, under autocast)."""
  if optimizer == 'sgd':
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
  else:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16')

  def step():
    opt.zero_grad(set_to_none=True)
    with autocast:
      loss = loss_fn()
    loss.backward()
    opt.step()
    if device == 'cuda':
      torch.cuda.synchronize()

  seconds = timing.median_seconds(step, steps, warmup)
  return seconds, torch.__version__, torch.get_num_threads()


def dit_model(config):
  """diffusers' DiTTransformer2DModel of config.model's DiT (on the CPU)."""
  _torch()
  from diffusers import DiTTransformer2DModel  # pylint: disable=g-import-not-at-top
  # the config's own depth, width and heads where it overrides the name's (configs/demo.py)
  depth, width, heads, patch = dit_sizes(config.model)
  m = config.model
  return DiTTransformer2DModel(
      num_attention_heads=heads, attention_head_dim=width // heads, in_channels=m.in_channels,
      out_channels=m.in_channels, num_layers=depth, sample_size=m.input_size, patch_size=patch,
      num_embeds_ada_norm=m.num_classes)


def unet_model(config):
  """diffusers' UNet2DConditionModel of a DiffDis config's UNet (config.model, in diffusers'
  field names) with config.diffdis's context width (on the CPU)."""
  _torch()
  from diffusers import UNet2DConditionModel  # pylint: disable=g-import-not-at-top
  m = config.model
  return UNet2DConditionModel(sample_size=m.input_size, in_channels=m.in_channels,
                              out_channels=m.in_channels,
                              cross_attention_dim=config.diffdis.context_dim, **unet_fields(m))


def dit_step(config, steps: int, warmup: int, dtype: str = 'float32', optimizer: str = 'adamw'):
  """dit_model's step: MSE against the input."""
  torch, device = _torch()
  model, m, b = dit_model(config).to(device), config.model, config.batch_size
  x = torch.randn(b, m.in_channels, m.input_size, m.input_size, device=device)
  t = torch.randint(0, 1000, (b,), device=device)
  y = torch.randint(0, m.num_classes, (b,), device=device)
  loss = lambda: torch.nn.functional.mse_loss(
      model(x, timestep=t, class_labels=y).sample.float(), x)
  return _time_steps(torch, model, loss, device, steps, warmup, dtype, optimizer)


def unet_step(config, steps: int, warmup: int, dtype: str = 'float32', optimizer: str = 'adamw'):
  """unet_model's step on a (batch, context_length, context_dim) context: the epsilon MSE of
  the plain SD step, which is DiffDis' generation-only baseline."""
  torch, device = _torch()
  model, m, d, b = unet_model(config).to(device), config.model, config.diffdis, config.batch_size
  x = torch.randn(b, m.in_channels, m.input_size, m.input_size, device=device)
  noise = torch.randn_like(x)
  t = torch.randint(0, 1000, (b,), device=device)
  context = torch.randn(b, d.context_length, d.context_dim, device=device)
  loss = lambda: torch.nn.functional.mse_loss(
      model(x, t, encoder_hidden_states=context).sample.float(), noise)
  return _time_steps(torch, model, loss, device, steps, warmup, dtype, optimizer)
