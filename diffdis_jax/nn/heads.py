"""Projection heads for self-supervised objectives."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from diffdis_jax.nn import layers

_trunc = nn.initializers.truncated_normal(0.02)


class ProjectionHead(nn.Module):
  """iBOT/DINO head: MLP, L2-normalised bottleneck, weight-normalised prototypes.

  The prototype matrix is normalised per prototype (DINO's weight norm with the gain frozen
  at 1), so the logits are cosine similarities. Logits are float32.
  """
  hidden: int = 2048
  bottleneck: int = 256
  out_dim: int = 8192
  num_layers: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = x
    for i in range(self.num_layers - 1):
      h = nn.gelu(layers.Dense(self.hidden, ('embed', 'mlp'), kernel_init=_trunc,
                               dtype=self.dtype, name=f'mlp_{i}')(h), approximate=False)
    h = layers.Dense(self.bottleneck, ('mlp', 'embed'), kernel_init=_trunc, dtype=self.dtype,
                     name=f'mlp_{self.num_layers - 1}')(h).astype(jnp.float32)
    h = h / jnp.maximum(jnp.linalg.norm(h, axis=-1, keepdims=True), 1e-6)
    v = self.param('prototypes', layers.partitioned(_trunc, ('embed', 'proto')),
                   (self.bottleneck, self.out_dim), jnp.float32)
    w = v / jnp.maximum(jnp.linalg.norm(v, axis=0, keepdims=True), 1e-6)
    logits = h @ w
    return layers.constrain(logits, (layers.BATCH,) + (layers.LENGTH,) * (logits.ndim - 2)
                            + (None,))
