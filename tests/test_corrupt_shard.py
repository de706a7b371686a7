"""A latent shard that is cut short or changed after the run opened it: reading a record
it no longer holds raises `UnreadableRecord` naming the shard and the record; a shard cut
short before the run is named when the source opens.

The latent set is written here (two ArrayRecord shards of random posteriors, the layout
--mode=extract_latents writes), so no VAE is needed.
"""
import os
import re

import numpy as np
import pytest

from diffdis_jax.data import latent_sets, pipeline

RECORDS = 32  # per shard


def _latent_set(folder):
  os.makedirs(folder)
  features = latent_sets.output_features(8, 4, 10)
  rng = np.random.default_rng(0)
  for shard in range(2):
    examples = [{'mean': rng.standard_normal((2, 8, 8, 4), np.float32),
                 'std': np.full((2, 8, 8, 4), 0.1, np.float32), 'label': int(rng.integers(10))}
                for _ in range(RECORDS)]
    latent_sets.write_records(latent_sets.shard_path(folder, 'train', shard, 2), features,
                              examples)
  latent_sets.write_dataset_info(folder, features, 'train', [RECORDS, RECORDS])
  return [latent_sets.shard_path(folder, 'train', s, 2) for s in range(2)]


@pytest.fixture
def latent_set(tmp_path):
  folder = str(tmp_path / 'latents')
  return folder, _latent_set(folder)


def test_a_changed_record_is_named_and_the_others_still_read(latent_set):
  folder, shards = latent_set
  source = pipeline.latent_source(folder)  # opened intact, as a running job has it
  size = os.path.getsize(shards[1])
  with open(shards[1], 'r+b') as f:  # flip bytes inside the records' data
    f.seek(size // 4)
    data = f.read(256)
    f.seek(size // 4)
    f.write(bytes(b ^ 0xFF for b in data))
  bad = []
  for index in range(2 * RECORDS):
    try:
      source[index]
    except pipeline.UnreadableRecord as e:
      record = index - RECORDS
      assert f'latent shard {shards[1]} record {record} (example {index}' in str(e), str(e)
      bad.append(index)
  assert bad and all(i >= RECORDS for i in bad) and len(bad) < RECORDS  # only what changed


def test_a_truncated_shard_at_start_up_is_named(latent_set):
  folder, shards = latent_set
  os.truncate(shards[0], os.path.getsize(shards[0]) // 3)
  with pytest.raises(pipeline.UnreadableRecord, match=f'latent shard {re.escape(shards[0])} '
                                                      'cannot be opened'):
    pipeline.latent_source(folder)
