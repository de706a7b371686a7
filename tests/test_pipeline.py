"""The latent training input: grain over a TFDS ArrayRecord set, seeded, resumable, per host."""
import numpy as np
import pytest

from conftest import tiny_sddit_config
from diffdis_jax.data import latent_sets as il
from diffdis_jax.data import pipeline

N = 24            # examples: 3 global batches of 8 per epoch
SIDE, CH = 4, 4


@pytest.fixture(scope='module')
def latent_dir(tmp_path_factory):
  """A latent set as extraction writes it; example i has label i, row 0 of its mean is +i,
  row 1 (the flip) is -i - 1000; std is 1 in the last channel, 0 elsewhere."""
  out = str(tmp_path_factory.mktemp('latents'))
  features = il.output_features(SIDE, CH, num_classes=N)
  lengths = (10, 10, 4)

  def example(i):
    mean = np.stack([np.full((SIDE, SIDE, CH), i, np.float32),
                     np.full((SIDE, SIDE, CH), -i - 1000, np.float32)])
    std = np.zeros_like(mean)
    std[..., -1] = 1.0  # noise in the last channel only: channel 0 still names the example
    return {'mean': mean, 'std': std, 'label': i}

  start = 0
  for shard, n in enumerate(lengths):
    il.write_records(il.shard_path(out, 'train', shard, len(lengths)), features,
                     (example(i) for i in range(start, start + n)))
    start += n
  il.write_dataset_info(out, features, 'train', lengths)
  return out


def _config(out, seed=0, batch=8):
  return tiny_sddit_config(**{'data.name': 'latents', 'data.dir': out,
                              'seed': seed, 'batch_size': batch, 'data.latent_scale': 0.5})


def _take(it, n):
  return [next(it) for _ in range(n)]


def _ids(batch):
  """Example index and whether the flip was taken, read back from the constant latents."""
  unscaled = batch['image'][:, 0, 0, 0] / 0.5
  flipped = unscaled <= -1000
  return np.where(flipped, -unscaled - 1000, unscaled).astype(int), flipped


def test_source_reads_what_was_written(latent_dir):
  source = pipeline.latent_source(latent_dir)
  assert len(source) == N
  assert int(source[13]['label']) == 13 and source[13]['mean'].shape == (2, SIDE, SIDE, CH)
  np.testing.assert_array_equal(source[13]['mean'][1], -1013)


def test_own_parsing_matches_tfds_data_source(latent_dir):
  import tensorflow_datasets as tfds
  theirs = tfds.builder_from_directory(latent_dir).as_data_source(split='train')
  ours = pipeline.latent_source(latent_dir)
  for i in (0, 9, 10, 23):  # first and last of shards
    for key in ('mean', 'std', 'label'):
      np.testing.assert_array_equal(ours[i][key], theirs[i][key])


def test_batches_are_scaled_draws_of_image_or_flip(latent_dir):
  batches = _take(pipeline.make_train_iterator(_config(latent_dir)), 6)
  for b in batches:
    assert b['image'].shape == (8, SIDE, SIDE, CH) and b['image'].dtype == np.float32
    ids, _ = _ids(b)
    np.testing.assert_array_equal(ids, b['label'])  # the latent is its own example's
  flips = np.concatenate([_ids(b)[1] for b in batches])
  assert 0.2 < flips.mean() < 0.8  # both the image and its flip are used
  # every epoch (3 batches) is a permutation of all examples, reshuffled each time
  first, second = (np.concatenate([b['label'] for b in batches[k:k + 3]]) for k in (0, 3))
  assert sorted(first) == sorted(second) == list(range(N))
  assert list(first) != list(second)


def test_noise_is_mean_plus_std_times_normal():
  example = {'mean': np.stack([np.full((32, 32, 4), 3.0, np.float32)] * 2),
             'std': np.full((2, 32, 32, 4), 2.0, np.float32), 'label': 1}
  draw = pipeline.sample_latent(0.5)(example, np.random.default_rng(0))['image']
  assert abs(draw.mean() - 1.5) < 0.05 and abs(draw.std() - 1.0) < 0.05


def test_same_seed_same_batches_other_seed_others(latent_dir):
  a = _take(pipeline.make_train_iterator(_config(latent_dir, seed=3)), 4)
  b = _take(pipeline.make_train_iterator(_config(latent_dir, seed=3)), 4)
  c = _take(pipeline.make_train_iterator(_config(latent_dir, seed=4)), 4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert any((x['label'] != z['label']).any() for x, z in zip(a, c))


def test_resumed_iterator_continues_the_same_sequence(latent_dir):
  uninterrupted = _take(pipeline.make_train_iterator(_config(latent_dir)), 7)
  first = pipeline.make_train_iterator(_config(latent_dir))
  _take(first, 4)
  state = first.get_state()
  resumed = pipeline.make_train_iterator(_config(latent_dir))
  resumed.set_state(state)
  for x, y in zip(uninterrupted[4:], _take(resumed, 3)):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


def test_two_hosts_read_disjoint_halves_of_the_single_host_batches(latent_dir):
  config = _config(latent_dir)
  single = _take(pipeline.make_train_iterator(config), 3)  # one epoch
  hosts = [_take(pipeline.make_train_iterator(config, p, 2), 3) for p in (0, 1)]
  seen = [np.concatenate([b['label'] for b in h]) for h in hosts]
  assert not set(seen[0]) & set(seen[1])
  assert sorted(np.concatenate(seen)) == list(range(N))
  assert np.std(single[0]['image'][..., -1]) > 0.1  # noise drawn, yet identical below
  for k in range(3):  # the same global batch, rows split between the hosts, same draws
    joined = np.concatenate([hosts[0][k]['image'], hosts[1][k]['image']])
    np.testing.assert_array_equal(joined, single[k]['image'])
