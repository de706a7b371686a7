"""The CPU demo: a small SD-DiT on scikit-learn's 8x8 digits (upsampled to 16x16, pixel space).

Trains on 2 CPU cores in a few minutes and writes a class-conditional sample grid.
"""
from configs import common


def get_config():
  c = common.get_base_config()
  c.data.name = 'digits'
  c.data.image_size = 16
  c.model.name = 'DiT-S/2'
  c.model.input_size = 16
  c.model.in_channels = 1
  c.model.num_classes = 10
  c.model.width = 96
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.decoder_depth = 2
  c.model.decoder_width = 96
  c.model.decoder_heads = 4
  c.model.head = dict(hidden=256, bottleneck=64, out_dim=256, num_layers=3)
  c.batch_size = 32
  c.total_steps = 1000
  c.log_every = 50
  c.checkpoint_every = 500
  c.sample_every = 500
  c.ema_decay = 0.999
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.grad_clip = 1.0
  c.sample.steps = 18
  c.sample.per_class = 6
  c.sample.guidance = 1.5
  c.eval.digits_samples = 300       # fd_digits and sample_class_acc at the end
  c.mesh.data = -1                   # plain data parallelism over whatever devices there are
  return c
