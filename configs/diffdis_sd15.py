"""DiffDis at SD 1.5 scale: the UNet initialised from an SD 1.5 diffusers folder, trained on
image-text pair shards (data/captions.py: webdataset tars, TFRecord or ArrayRecord).

  python launch/main.py --config=configs/diffdis_sd15.py --workdir=DIR \
      --config.init.sd_folder=/path/to/stable-diffusion-v1-5 --config.data.dir=SHARDS \
      --config.init.text_encoder=/path/to/clip-vit-large-patch14-text-with-projection

Each step SD's VAE encodes the 512 px images and CLIP encodes the captions on the devices
(tasks/diffdis/pair_encoder.py); both stay frozen. The text query e is CLIP's projected end-of-text
embedding, whose projection SD 1.5's text_encoder/ lacks: init.text_encoder names a
transformers CLIPTextModelWithProjection folder of CLIP ViT-L/14 (the same text tower), or pass
--config.diffdis.query=eot to use the unprojected state. The UNet weights go into the DiffDis
UNet unchanged (nn/diffdis.with_unet_params); the text stream, head, logit scale and image null
start fresh. Baselines (paper §4) are overrides of this same config:
  generation only   --config.diffdis.align_mode=none
  alignment only    --config.diffdis.gen_weight=0
  CLIP-style        --config.diffdis.align_mode=contrastive
"""
from configs import diffdis_common


def get_config():
  config = diffdis_common.diffdis_config()  # model: SD 1.5's UNet on 64x64x4 latents
  config.data.name = 'image_text_pairs'
  config.compute_dtype = 'bfloat16'
  config.batch_size = 256
  config.total_steps = 100_000
  config.optim.lr = 1e-5                 # fine-tuning a pretrained UNet
  config.optim.warmup_steps = 1000
  config.optim.grad_clip = 1.0
  config.log_every = 100
  config.checkpoint_every = 5_000
  config.sample_every = 5_000
  return config
