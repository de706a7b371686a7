"""DiT-XL/2 baseline on EDM: the SD-DiT objective with no teacher and no mask.

`decoder_mode='split'` with the stack's own blocks makes the parameter set exactly DiT-XL/2.
"""
from configs import common


def get_config():
  c = common.imagenet_config('DiT-XL/2')
  c.model.decoder_mode = 'split'
  c.model.decoder_depth = 0
  c.sddit.dis_weight = 0.0
  c.sddit.mask_ratio = 0.0
  return c
