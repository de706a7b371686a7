"""Sharded sampling to ADM-format .npz files (eval/sample_npz.py)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_sddit_config
from diffdis_jax.tasks import make_task
from diffdis_jax.eval import sample_npz
from diffdis_jax.parallel import mesh as mesh_lib

NUM = 13  # not a multiple of any batch below: the last batch is padded and trimmed


@pytest.fixture(scope='module')
def model_and_params():
  config = tiny_sddit_config(**{'sample.steps': 2, 'sample.guidance': 1.5,
                                'sample.labels': 'random', 'sddit.dis_weight': 0.0})
  model = make_task(config).build_model()
  m = config.model
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, m.input_size, m.input_size, 1)),
                      jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))['params']
  # DiT zero-initialises its output layers: random weights everywhere make images depend on
  # the labels and the noise
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  return config, model, params


def _sampler(config, model, params, num_devices):
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:num_devices])
  params = jax.device_put(params, mesh_lib.replicated(mesh))
  sampler, sharding = sample_npz.make_batch_sampler(model, config, mesh)
  return lambda num, batch: sample_npz.sample_rows(sampler, sharding, params, None, num, batch)


def test_same_images_for_any_device_count_and_batch(model_and_params, tmp_path):
  config, model, params = model_and_params
  one_device = _sampler(config, model, params, 1)
  indices, images, labels = one_device(NUM, 4)
  np.testing.assert_array_equal(indices, np.arange(NUM))
  assert images.dtype == np.uint8 and images.shape == (NUM, 8, 8, 3)
  assert len(np.unique(labels)) > 3 and labels.max() < 10
  # samples differ from each other (the noise is per index, not shared)
  assert len({im.tobytes() for im in images}) == NUM

  # 8 devices, another global batch size, through the file writer (process 0 of 1)
  output = str(tmp_path / 'samples.npz')
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices())
  assert mesh_lib.data_parallel_size(mesh) == 8
  sample_npz.write_samples_npz(model, config, mesh, jax.device_put(params,
                                                                   mesh_lib.replicated(mesh)),
                               output, num_samples=NUM, batch_size=16)
  with np.load(output) as npz:
    assert sorted(npz.files) == ['arr_0', 'arr_1']  # ADM's layout
    np.testing.assert_array_equal(npz['arr_0'], images)
    np.testing.assert_array_equal(npz['arr_1'], labels)
  assert sample_npz.stale_parts(output) == []  # the part file was merged and removed
  with open(sample_npz.settings_path(output)) as f:
    settings = json.load(f)
  assert settings['steps'] == 2 and settings['guidance'] == 1.5 and settings['devices'] == 8
  assert settings['num_samples'] == NUM and settings['solver'] == 'heun'

  # the first samples of a smaller run are the same images: seeds depend on the index only
  _, first, first_labels = one_device(5, 4)
  np.testing.assert_array_equal(first, images[:5])
  np.testing.assert_array_equal(first_labels, labels[:5])


def test_inputs_depend_on_index_only():
  key = jax.random.PRNGKey(3)
  idx = jnp.arange(10)
  noise, labels = sample_npz.inputs_for_indices(key, idx, (2, 2, 1), 7, 'random')
  noise_b, labels_b = sample_npz.inputs_for_indices(key, idx[::-1], (2, 2, 1), 7, 'random')
  np.testing.assert_array_equal(noise_b, noise[::-1])
  np.testing.assert_array_equal(labels_b, labels[::-1])
  _, balanced = sample_npz.inputs_for_indices(key, idx, (2, 2, 1), 7, 'balanced')
  np.testing.assert_array_equal(balanced, np.arange(10) % 7)
  with pytest.raises(ValueError, match='sample.labels'):
    sample_npz.inputs_for_indices(key, idx, (1,), 7, 'nope')


def test_parts_of_two_processes_merge_in_index_order(tmp_path):
  output = str(tmp_path / 'out.npz')
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
  labels = np.arange(7, dtype=np.int32) * 3
  # process 1 holds the odd indices, process 0 the even ones, each in its own order
  odd, even = np.array([5, 1, 3]), np.array([0, 2, 4, 6])
  sample_npz.write_part(output, 1, 2, odd, images[odd], labels[odd])
  sample_npz.write_part(output, 0, 2, even, images[even], labels[even])
  assert len(sample_npz.stale_parts(output)) == 2
  sample_npz.merge_parts(output, 7, 2)
  with np.load(output) as npz:
    np.testing.assert_array_equal(npz['arr_0'], images)
    np.testing.assert_array_equal(npz['arr_1'], labels)
  assert sample_npz.stale_parts(output) == []

  # a missing or duplicated index is refused and the parts are kept
  sample_npz.write_part(output, 0, 2, np.array([0, 1]), images[:2], labels[:2])
  sample_npz.write_part(output, 1, 2, np.array([1]), images[1:2], labels[1:2])
  with pytest.raises(ValueError, match='exactly once'):
    sample_npz.merge_parts(output, 3, 2)
  assert len(sample_npz.stale_parts(output)) == 2
  os.remove(sample_npz.part_path(output, 1, 2))
  with pytest.raises(FileNotFoundError, match='missing'):
    sample_npz.merge_parts(output, 2, 2)


def test_dataset_images_as_reference_file(tmp_path):
  from diffdis_jax.data import digits  # pylint: disable=g-import-not-at-top
  data = digits.load_digits('test', 16)
  path = sample_npz.write_images_npz(str(tmp_path / 'ref.npz'), **data)
  with np.load(path) as npz:
    assert npz['arr_0'].shape == (len(data['label']), 16, 16, 3)
    assert npz['arr_0'].dtype == np.uint8 and npz['arr_0'].max() > 200
    np.testing.assert_array_equal(npz['arr_0'][..., 0], npz['arr_0'][..., 2])  # gray as RGB
    np.testing.assert_array_equal(npz['arr_1'], data['label'])
  with pytest.raises(FileExistsError):
    sample_npz.write_images_npz(path, **data)


def test_latent_model_samples_decode_through_the_vae():
  from diffdis_jax.nn.vae import AutoencoderKL  # pylint: disable=g-import-not-at-top
  config = tiny_sddit_config(**{'model.in_channels': 4, 'sample.steps': 1,
                                'sample.guidance': 1.0, 'sddit.dis_weight': 0.0})
  model = make_task(config).build_model()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)),
                      jnp.zeros((1,), jnp.int32))['params']
  vae = AutoencoderKL(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4)
  vae_params = vae.init(jax.random.PRNGKey(1), jnp.zeros((1, 16, 16, 3)))['params']
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:2])
  sampler, sharding = sample_npz.make_batch_sampler(model, config, mesh, vae)
  indices, images, labels = sample_npz.sample_rows(sampler, sharding, params, vae_params, 3, 2)
  # two VAE levels: 8x8 latents decode to 16x16 RGB pixels
  assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8 and len(labels) == 3
  assert np.ptp(images) > 0
