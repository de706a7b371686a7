"""A KL autoencoder (nn/vae.py, diffusers' AutoencoderKL layout) trained on an image set, and
exported as a diffusers folder that the latent stages read (extraction, sampling).

At the end of training, on the EMA params:
  * the test split's reconstructions are scored: PSNR, and through the project's classifier
    (eval/classifier_metric.py) the share read as their class and their Fréchet distance to
    the real test images: the floor a latent model decoded by this VAE can reach;
  * the scale factor is measured as SD's was: 1 / the std of the posterior means of 10,000
    training images, so that scaled latents have unit variance;
  * `<workdir>/diffusers/` gets config.json and diffusion_pytorch_model.safetensors.
"""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax import weights
from diffdis_jax.data import fashion_mnist, pipeline
from diffdis_jax.eval import image_set_metrics
from diffdis_jax.eval.sample import to_grid
from diffdis_jax.nn.vae import AutoencoderKL
from diffdis_jax.objectives import autoencoder as objective
from diffdis_jax.tasks import base
from diffdis_jax.tasks.autoencoder import checks

EXPORT_DIR = 'diffusers'
SCALE_IMAGES = 10_000   # training images whose latents set the scale factor
EVAL_BATCH = 500


def export_dir(workdir: str) -> str:
  return os.path.join(workdir, EXPORT_DIR)


class AutoencoderTask(base.Task):

  name = 'autoencoder'
  objective = objective

  def check_config(self):
    checks.check_config(self.config)

  def build_model(self, scaling_factor: float = 1.0):
    m = self.config.model
    return AutoencoderKL(
        in_channels=m.in_channels, out_channels=m.in_channels,
        block_out_channels=tuple(m.block_out_channels), layers_per_block=m.layers_per_block,
        latent_channels=m.latent_channels, norm_num_groups=m.norm_num_groups,
        scaling_factor=scaling_factor, mid_block_add_attention=m.mid_block_attention,
        dtype=base.compute_dtype(self.config))

  def init_params(self, model, rng):
    side = self.config.data.image_size
    return model.init(rng, jnp.zeros((1, side, side, model.in_channels)))['params']

  # ------------------------------------------------------------------ data

  def abstract_batch(self, batch_sharding):
    b, side, c = self.config.batch_size, self.config.data.image_size, self.config.model.in_channels
    return {'image': jax.ShapeDtypeStruct((b, side, side, c), jnp.float32,
                                          sharding=batch_sharding),
            'label': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sharding)}

  def train_iterator(self, process_index: int, process_count: int):
    return pipeline.make_train_iterator(self.config, process_index, process_count)

  def _images(self, split: str, count: int | None = None):
    data = fashion_mnist.load_split(self.config.data.dir, split)
    images, labels = data['image'][:count], data['label'][:count]
    return fashion_mnist.to_model_input(images, self.config.data.image_size), labels

  # ------------------------------------------------------------------ previews, evaluation

  def make_preview_fn(self, model):
    """reconstruct(params, images) -> (decode(posterior mean), posterior mean)."""
    def reconstruct(params, images):
      mean, _ = model.apply({'params': params}, images, method='encode')
      recon = model.apply({'params': params}, mean, method='decode')
      return jnp.clip(recon.astype(jnp.float32), -1.0, 1.0), mean
    return jax.jit(reconstruct)

  def preview(self, preview_fn, params):
    """Two rows per block: the first test image of each class, then its reconstruction."""
    images, labels = self._images('test', 1000)
    firsts = np.asarray([np.flatnonzero(labels == k)[0] for k in range(fashion_mnist.NUM_CLASSES)
                         if (labels == k).any()])
    recon, _ = preview_fn(params, images[firsts])
    return to_grid(np.concatenate([images[firsts], np.asarray(recon)]), cols=len(firsts))

  @staticmethod
  def _in_batches(fn, params, images) -> np.ndarray:
    """fn(params, batch) over `images` in EVAL_BATCH slices, concatenated on the host."""
    return np.concatenate([jax.device_get(fn(params, images[i:i + EVAL_BATCH]))
                           for i in range(0, len(images), EVAL_BATCH)])

  def final_eval(self, preview_fn, params) -> dict:
    """Reconstruction scores on the test split, the scale factor, and the export."""
    config = self.config
    train_images, _ = self._images('train', SCALE_IMAGES)
    model = self.build_model()
    encode = jax.jit(lambda p, x: model.apply({'params': p}, x, method='encode')[0])
    scaling_factor = float(1.0 / self._in_batches(encode, params, train_images).std())
    images, labels = self._images('test')
    recon = self._in_batches(lambda p, x: preview_fn(p, x)[0], params, images)
    psnr = float(np.mean(jax.device_get(objective.psnr(jnp.asarray(images),
                                                       jnp.asarray(recon)))))
    metric = image_set_metrics.metric_for(config, self.workdir)
    scores = metric.evaluate(recon, labels)
    out = {'test_psnr': psnr, 'recon_class_acc': scores['sample_class_acc'],
           'fd_fmnist_recon': scores['fd_fmnist'], 'classifier_test_acc': metric.test_accuracy,
           'scaling_factor': scaling_factor}
    if jax.process_index() == 0:
      folder = weights.save_diffusers_vae(export_dir(self.workdir),
                                          self.build_model(scaling_factor),
                                          jax.device_get(params),
                                          sample_size=config.data.image_size)
      logging.info('autoencoder exported to %s: %s', folder, out)
    return out
