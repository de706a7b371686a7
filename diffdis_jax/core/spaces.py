"""Whether a model works on images or on a VAE's latents, decided in one place.

Images have one (grey) or three (RGB) channels; a model whose input has any other width is
taken to see VAE latents (SD's have four), which need the VAE's decoder to be shown and its
encoder to be fed images.
"""
PIXEL_CHANNELS = (1, 3)


def is_pixel_space(in_channels: int) -> bool:
  return in_channels in PIXEL_CHANNELS
