"""SD-DiT-B/2 on ImageNet 256 (pre-extracted SD-VAE latents)."""
from configs import common


def get_config():
  return common.imagenet_config('DiT-B/2')
