"""SD-DiT-B/2 on ImageNet 256 (pre-extracted SD-VAE latents).

The last 4 of DiT-B's 12 blocks decode ('split'), and the projection head is 1,536 wide with
4,096 prototypes: 1.14x DiT-B/2's training FLOPs per image (`bench/flops.py
--config=configs/sddit_b.py`); MaskDiT's separate 8x512 decoder would cost 1.53x
(docs/paper_notes.md, "SD-DiT per model size").
"""
from configs import common


def get_config():
  return common.sized_sddit(common.imagenet_config('DiT-B/2'), decoder_mode='split',
                            decoder_depth=4, head_hidden=1536, head_out_dim=4096)
