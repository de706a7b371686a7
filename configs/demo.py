"""The CPU demo: a small SD-DiT on scikit-learn's 8x8 digits (upsampled to 16x16, pixel space).

Trains on 2 CPU cores in a few minutes and writes a class-conditional sample grid.
"""
from configs import common


def get_config():
  config = common.get_base_config()
  config.data.name = 'digits'
  config.data.image_size = 16
  config.model.name = 'DiT-S/2'
  config.model.input_size = 16
  config.model.in_channels = 1
  config.model.num_classes = 10
  config.model.width = 96
  config.model.depth = 4
  config.model.num_heads = 4
  config.model.decoder_depth = 2
  config.model.decoder_width = 96
  config.model.decoder_heads = 4
  config.model.head = dict(hidden=256, bottleneck=64, out_dim=256, num_layers=3)
  config.batch_size = 32
  config.total_steps = 1000
  config.log_every = 50
  config.checkpoint_every = 500
  config.sample_every = 500
  config.ema_decay = 0.999
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 100
  config.optim.grad_clip = 1.0
  config.sample.steps = 18
  config.sample.per_class = 6
  config.sample.guidance = 1.5
  config.eval.metric_samples = 300  # fd_digits and sample_class_acc at the end
  config.mesh.data = -1              # plain data parallelism over whatever devices there are
  return config
