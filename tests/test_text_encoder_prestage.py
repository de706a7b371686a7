"""The captioned sets' text-encoder pre-stage: with the caption term (caption_weight > 0) the
phrasings of a class stay apart; without it they collapse to one point."""
import numpy as np

from configs import fmnist_diffdis
from diffdis_jax.data import fashion_mnist as fm
from diffdis_jax.data import fashion_mnist_captions as fc
from diffdis_jax.tasks.diffdis.text_encoders import CaptionTextEncoder, positive_labels

N_IMAGES = 2000


def test_positive_ids_are_the_caption_or_the_class():
  labels, drawn = np.array([0, 0, 1, 1]), np.array([2, 2, 2, 5])
  assert positive_labels('caption', labels, drawn, 18).tolist() == [2, 2, 20, 23]
  assert positive_labels('class', labels, drawn, 18).tolist() == [0, 0, 1, 1]


def _within_class_cosine(caption_weight: float) -> float:
  """Mean cosine between two different training captions of one class, after a short
  pre-stage of a small text tower on real Fashion-MNIST images."""
  config = fmnist_diffdis.get_config()
  t = config.text_encoder
  t.hidden_size, t.intermediate_size, t.projection_dim = 32, 64, 32
  t.num_hidden_layers, t.pretrain_steps, t.pretrain_batch = 1, 300, 128
  t.caption_weight = caption_weight
  data = fm.load_split(fm.DEBIAN_DIR, 'train')
  images = fm.to_model_input(data['image'][:N_IMAGES], fm.SIDE)
  encoder = CaptionTextEncoder.create(t, None, fc, lambda: (images, data['label'][:N_IMAGES]),
                                      data_key='test', seed=0)
  within = []
  for prompts in fc.class_prompts('train'):
    e = encoder.encode(prompts)[1]
    c = e @ e.T
    within.append(c[~np.eye(len(c), dtype=bool)].mean())
  return float(np.mean(within))


def test_the_caption_term_keeps_phrasings_apart():
  collapsed, apart = _within_class_cosine(0.0), _within_class_cosine(0.3)
  assert collapsed > 0.95, collapsed
  assert apart < collapsed - 0.2, (apart, collapsed)
