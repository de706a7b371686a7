"""SD-DiT-XL/2 on ImageNet 256 (pre-extracted SD-VAE latents).

MaskDiT's separate decoder (8 blocks of width 512, the size MaskDiT chose for XL) and iBOT's
patch head (2,048 wide, 8,192 prototypes): 1.21x DiT-XL/2's training FLOPs per image
(`bench/flops.py --config=configs/sddit_xl.py`; docs/paper_notes.md, "SD-DiT per model
size").
"""
from configs import common


def get_config():
  return common.sized_sddit(common.imagenet_config('DiT-XL/2'), decoder_mode='separate',
                            decoder_depth=8, head_hidden=2048, head_out_dim=8192)
