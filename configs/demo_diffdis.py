"""The DiffDis CPU demo: scikit-learn digits with captions, a tiny pixel-space DiffDisUNet and
a tiny CLIP text encoder trained from scratch (frozen during diffusion training).

  python launch/main.py --config=configs/demo_diffdis.py --workdir=/tmp/dd_demo

First a seeded pre-stage trains the text encoder contrastively (cached under
<workdir>/text_encoder/); then DiffDis trains; at the end it classifies the held-out digits
zero-shot (the class prompts as candidates), writes zeroshot_top1 to metrics.jsonl and a
text-to-image grid (one row per digit prompt) under samples/.
"""
from configs import diffdis_common
from diffdis_jax.data import digits_captions


def get_config():
  config = diffdis_common.diffdis_config()
  config.data.name = 'captioned_digits'
  config.data.image_size = 8        # the digits' native resolution: 4x cheaper than 16x16
  # pixels in [-1, 1]: no VAE
  diffdis_common.captioned_demo(
      config, digits_captions, input_size=8, in_channels=1, channels=(32, 64),
      norm_num_groups=8, hidden_size=32, intermediate_size=64, projection_dim=32,
      image_hidden=128, pretrain_steps=400, pretrain_batch=128, pretrain_lr=3e-3)
  # the digits have one prompt set, no held-out phrasings to keep apart: their text encoder
  # stays the one docs/results.md measured (every caption of the class a positive)
  config.text_encoder.positives = 'class'
  config.text_encoder.caption_weight = 0.0
  d = config.diffdis
  d.zeroshot.templates = digits_captions.CLASS_TEMPLATES
  d.zeroshot.steps = 10
  d.sample.steps = 20
  d.sample.guidance = 3.0

  config.batch_size = 32
  config.total_steps = 600
  config.log_every = 50
  config.checkpoint_every = 300
  config.sample_every = 300
  config.ema_decay = 0.999
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 100
  config.optim.grad_clip = 1.0
  config.mesh.data = -1
  return config
