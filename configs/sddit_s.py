"""SD-DiT-S/2 on ImageNet 256 (pre-extracted SD-VAE latents).

The last 4 of DiT-S's 12 blocks decode ('split'), and the projection head is 768 wide with
4,096 prototypes: 1.17x DiT-S/2's training FLOPs per image (`bench/flops.py
--config=configs/sddit_s.py`). MaskDiT's separate 8x512 decoder is wider than this encoder
and would cost 2.6x (docs/paper_notes.md, "SD-DiT per model size").
"""
from configs import common


def get_config():
  return common.sized_sddit(common.imagenet_config('DiT-S/2'), decoder_mode='split',
                            decoder_depth=4, head_hidden=768, head_out_dim=4096)
