"""DiffDis's frozen encoders on image-text pairs: a batch of pixels and caption tokens becomes
what the train step consumes, on the accelerator, before each step.

    encoder = PairEncoder(vae, vae_params, clip, clip_params, query='projected_eot', seed=0)
    batch = encoder(mesh_lib.shard_batch(host_batch, mesh), step)
    # {'image': SD latents (sampled from the VAE posterior, times its scaling factor),
    #  'context': c, CLIP's last hidden states, 'query': e, the unit text query}

The VAE and the text encoder stay frozen (paper §3), so they are not part of the train state
or its checkpoints: their weights are replicated over the mesh once and the work is split
over the batch axes like the step's. The latent draw of step s uses fold_in(seed, s), so a
resumed run draws what the uninterrupted run drew. Only the VAE's encoder half is placed on
the devices. Encoding once and caching the result, as the anchors do for ImageNet, would save
the VAE encoder's forward pass each step; for pairs that cache is not built yet.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffdis_jax.objectives.diffdis import text_query
from diffdis_jax.parallel import mesh as mesh_lib

# the parts of AutoencoderKL's params `encode` reads
VAE_ENCODER_PARAMS = ('encoder', 'quant_conv')


class PairEncoder:
  """(sharded batch of {'image' pixels in [-1, 1], 'input_ids', 'attention_mask'}, step) ->
  {'image' latents, 'context', 'query'} with the batch's sharding."""

  def __init__(self, vae, vae_params, clip, clip_params, *, query: str, seed: int):
    self.vae, self.clip, self.query = vae, clip, query
    self._host_params = {
        'vae': {k: v for k, v in vae_params.items() if k in VAE_ENCODER_PARAMS},
        'clip': clip_params}
    self._rng = jax.random.PRNGKey(seed)
    self._params = self._encode = None

  def _build(self, sharding):
    mesh = sharding.mesh
    self._params = jax.device_put(self._host_params, mesh_lib.replicated(mesh))
    self._host_params = None  # the replicas are what is used from here on
    self._encode = jax.jit(self.encode, in_shardings=(mesh_lib.replicated(mesh), sharding, None),
                           out_shardings=sharding)

  def encode(self, params, batch, rng):
    latents = self.vae.apply({'params': params['vae']}, batch['image'], rng,
                             method='encode_latents')
    out = self.clip.apply({'params': params['clip']}, batch['input_ids'])
    return {'image': latents.astype(jnp.float32),
            'context': out['last_hidden_state'].astype(jnp.float32),
            'query': text_query(out, self.query, batch['attention_mask'])}

  def __call__(self, batch, step: int):
    if self._encode is None:  # placed on the mesh the first batch arrives on
      self._build(batch['image'].sharding)
    return self._encode(self._params, batch, jax.random.fold_in(self._rng, step))
