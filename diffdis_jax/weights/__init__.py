"""Weights from other frameworks, safetensors only: diffusers, transformers and
facebookresearch/DiT layouts mapped onto this package's Flax modules.

Every `from_*` returns (module, params) with float32 params ready for
`module.apply({'params': params}, ...)`; keys that are missing, unexpected or mis-shaped
raise `WeightMismatchError` listing all of them. `to_diffusers_vae` / `save_diffusers_vae`
and `to_diffusers_dit` / `save_diffusers_dit` go the other way (weights/export.py).
"""
from diffdis_jax.weights.convert import WeightMismatchError, load_safetensors
from diffdis_jax.weights.dit import from_diffusers_dit, from_official_dit
from diffdis_jax.weights.export import (save_diffusers_dit, save_diffusers_vae,
                                        to_diffusers_dit, to_diffusers_vae)
from diffdis_jax.weights.stable_diffusion import (StableDiffusion, from_diffusers_unet,
                                                  from_diffusers_vae, from_transformers_clip_text,
                                                  load_clip_text_encoder, load_stable_diffusion,
                                                  load_vae, vae_config)

__all__ = [
    'WeightMismatchError', 'load_safetensors', 'from_diffusers_dit', 'from_official_dit',
    'from_diffusers_unet', 'from_diffusers_vae', 'from_transformers_clip_text',
    'load_clip_text_encoder', 'load_stable_diffusion', 'load_vae', 'vae_config',
    'StableDiffusion', 'to_diffusers_vae', 'save_diffusers_vae', 'to_diffusers_dit',
    'save_diffusers_dit',
]
