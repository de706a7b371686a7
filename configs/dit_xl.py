"""DiT-XL/2 baseline on EDM: the SD-DiT objective with no teacher and no mask.

`decoder_mode='split'` with the stack's own blocks makes the parameter set exactly DiT-XL/2.
"""
from configs import common
from diffdis_jax.core.overrides import apply_overrides


def get_config():
  return apply_overrides(common.imagenet_config('DiT-XL/2'), common.DIT_BASELINE,
                         'configs/dit_xl.py')
