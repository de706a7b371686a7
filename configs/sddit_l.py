"""SD-DiT-L/2 on ImageNet 256 (pre-extracted SD-VAE latents).

MaskDiT's separate decoder (8 blocks of width 512 on top of the 24-block encoder) and iBOT's
patch head (2,048 wide, 8,192 prototypes): 1.24x DiT-L/2's training FLOPs per image
(`bench/flops.py --config=configs/sddit_l.py`; docs/paper_notes.md, "SD-DiT per model size").
"""
from configs import common


def get_config():
  return common.sized_sddit(common.imagenet_config('DiT-L/2'), decoder_mode='separate',
                            decoder_depth=8, head_hidden=2048, head_out_dim=8192)
