"""The KL autoencoder's task: a VAE for a latent-diffusion recipe, trained and exported in
diffusers' format."""
from diffdis_jax.tasks.autoencoder.task import AutoencoderTask

__all__ = ['AutoencoderTask']
