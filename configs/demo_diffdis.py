"""The DiffDis CPU demo: scikit-learn digits with captions, a tiny pixel-space DiffDisUNet and
a tiny CLIP text encoder trained from scratch (frozen during diffusion training).

  python launch/main.py --config=configs/demo_diffdis.py --workdir=/tmp/dd_demo

First a seeded pre-stage trains the text encoder contrastively (cached under
<workdir>/text_encoder/); then DiffDis trains; at the end it classifies the held-out digits
zero-shot (the class prompts as candidates), writes zeroshot_top1 to metrics.jsonl and a
text-to-image grid (one row per digit prompt) under samples/.
"""
import ml_collections

from configs import diffdis_common
from diffdis_jax.data import digits_captions


def get_config():
  config = diffdis_common.diffdis_config()
  config.data.name = 'captioned_digits'
  config.data.image_size = 8        # the digits' native resolution: 4x cheaper than 16x16
  m = config.model
  m.input_size, m.in_channels = 8, 1              # pixels in [-1, 1]: no VAE
  m.block_out_channels = (32, 64)
  m.down_block_types = ('CrossAttnDownBlock2D', 'DownBlock2D')
  m.up_block_types = ('UpBlock2D', 'CrossAttnUpBlock2D')
  m.layers_per_block = 1
  m.attention_head_dim = 4                        # heads (diffusers' name)
  m.norm_num_groups = 8

  config.text_encoder = ml_collections.ConfigDict(dict(
      hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
      projection_dim=32, image_hidden=128, pretrain_steps=400, pretrain_batch=128,
      pretrain_lr=3e-3, seed=0))

  d = config.diffdis
  d.text_dim = config.text_encoder.projection_dim
  d.context_dim = config.text_encoder.hidden_size
  d.context_length = digits_captions.MAX_LENGTH
  d.head_blocks = 1
  d.positives = 'same_label'      # generated captions: every image of a digit shares content
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
