"""DiffDis at SD 1.5 scale: the UNet initialised from an SD 1.5 diffusers folder, trained on
image-text pairs (SD-VAE latents with CLIP ViT-L/14 c and e per caption, precomputed).

  python launch/main.py --config=configs/diffdis_sd15.py --workdir=DIR \
      --config.init.sd_folder=/path/to/stable-diffusion-v1-5 --config.data.dir=PAIRS

The UNet weights go into the DiffDis UNet unchanged (nn/diffdis.with_unet_params); the text
stream, head, logit scale and image null start fresh. Baselines (paper §4) are overrides of
this same config:
  generation only   --config.diffdis.align_mode=none
  alignment only    --config.diffdis.gen_weight=0
  CLIP-style        --config.diffdis.align_mode=contrastive
The pair pipeline is issue 6; until it lands, validation stops with one line naming it.
"""
from configs import diffdis_common


def get_config():
  c = diffdis_common.diffdis_config()   # model: SD 1.5's UNet on 64x64x4 latents
  c.data.name = 'image_text_pairs'
  c.compute_dtype = 'bfloat16'
  c.batch_size = 256
  c.total_steps = 100_000
  c.optim.lr = 1e-5                      # fine-tuning a pretrained UNet
  c.optim.warmup_steps = 1000
  c.optim.grad_clip = 1.0
  c.log_every = 100
  c.checkpoint_every = 5_000
  c.sample_every = 5_000
  return c
