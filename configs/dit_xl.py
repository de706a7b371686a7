"""DiT-XL/2 baseline on EDM: the SD-DiT objective with no teacher and no mask.

`decoder_mode='split'` with the stack's own blocks makes the parameter set exactly DiT-XL/2.
"""
from configs import common


def get_config():
  config = common.imagenet_config('DiT-XL/2')
  config.model.decoder_mode = 'split'
  config.model.decoder_depth = 0
  config.sddit.dis_weight = 0.0
  config.sddit.mask_ratio = 0.0
  return config
