"""A full disk under each writer of a run: a checkpoint, a metrics line, a sample grid, the
samples file, a latent shard, an exported VAE. Each runs out of space for real (a small tmpfs,
tests/small_disk.py) and must raise `DiskFull` naming what it wrote, where, and about how
much space that needed; leave no temporary file; and keep what was there before it.

The run as a user sees it (one line, no traceback, the resume) is tests/test_disk_full_run.py.
"""
import os
import subprocess
import sys
import textwrap

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffdis_jax import weights
from diffdis_jax.core import files
from diffdis_jax.data import latent_sets
from diffdis_jax.eval import sample_npz
from diffdis_jax.eval.sample import save_png
from diffdis_jax.nn.vae import AutoencoderKL
from diffdis_jax.train import checkpoint as ckpt_lib
from diffdis_jax.train.metrics_log import JsonlWriter
from small_disk import fill, small_disk


@pytest.fixture
def disk(tmp_path):
  with small_disk(tmp_path / 'disk', '2m') as folder:
    yield folder


def _listing(folder):
  return sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, names in os.walk(folder) for f in names)


def _raises_disk_full(fn, what, path):
  with pytest.raises(files.DiskFull) as info:
    fn()
  error = info.value
  assert error.what == what and error.path == path, (error.what, error.path)
  assert error.needed and error.needed > files.free_bytes(path), (error.needed, path)
  line = error.describe()
  assert '\n' not in line and what in line and path in line and 'needs about' in line
  return error


def test_metrics_line_on_a_full_disk_leaves_the_log_whole(disk):
  log = JsonlWriter(disk)
  log.write(1, {'loss': 1.0})
  before = open(log.path).read()
  fill(disk, leave=100)
  _raises_disk_full(lambda: log.write(2, {'loss': 2.0, 'padding': 'x' * 20000}),
                    'the step 2 line of metrics.jsonl', log.path)
  assert open(log.path).read() == before  # no half line


def test_sample_grid_png_and_samples_npz_on_a_full_disk(disk):
  grid = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
  png = os.path.join(disk, 'samples', 'step_00000002.png')
  save_png(png, grid[:10, :10])
  before = open(png, 'rb').read()
  output = os.path.join(disk, 'samples.npz')
  fill(disk, leave=4096)
  _raises_disk_full(lambda: save_png(png, grid, upscale=4), 'a sample grid', png)
  assert open(png, 'rb').read() == before
  big = np.zeros((4, 256, 256, 3), np.uint8)  # more than will be left
  os.remove(os.path.join(disk, 'filler'))
  sample_npz.write_part(output, 0, 1, np.arange(4), big, np.zeros(4, np.int32))
  fill(disk, leave=4096)
  _raises_disk_full(lambda: sample_npz.merge_parts(output, 4, 1), 'samples.npz', output)
  # the part the merge reads is still there: a rerun merges it
  assert _listing(disk) == ['filler', 'samples.npz.part00000-of-00001.npz',
                            'samples/step_00000002.png']


def test_latent_shard_on_a_full_disk_is_not_left_half_written(disk):
  features = latent_sets.output_features(8, 4, 10)
  rng = np.random.default_rng(0)
  examples = [{'mean': rng.standard_normal((2, 8, 8, 4), np.float32),
               'std': rng.standard_normal((2, 8, 8, 4), np.float32), 'label': 3}
              for _ in range(400)]  # 400 records of about 4 KiB
  done = latent_sets.shard_path(disk, 'train', 0, 2)
  assert latent_sets.write_records(done, features, examples[:10]) == 10
  before = open(done, 'rb').read()
  fill(disk, leave=64 * 1024)
  path = latent_sets.shard_path(disk, 'train', 1, 2)
  error = _raises_disk_full(
      lambda: latent_sets.write_records(path, features, iter(examples), expected=400),
      f'latent shard {os.path.basename(path)}', path)
  assert error.needed > 400 * 4 * 8 * 8 * 4  # the whole shard, not what fitted
  assert open(done, 'rb').read() == before
  assert _listing(disk) == ['filler', os.path.basename(done)]


def test_vae_export_on_a_full_disk(disk):
  vae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(32, 64),
                      layers_per_block=1, latent_channels=4, norm_num_groups=8)
  shapes = jax.eval_shape(lambda: vae.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1))))
  params = jax.tree.map(lambda s: np.ones(s.shape, s.dtype),
                        flax.core.meta.unbox(shapes['params']))
  folder = os.path.join(disk, 'vae')
  fill(disk, leave=64 * 1024)
  _raises_disk_full(lambda: weights.save_diffusers_vae(folder, vae, params),
                    'the exported VAE weights', os.path.join(folder, 'diffusion_pytorch_model'
                                                             '.safetensors'))
  # the config came first: a folder without weights, which load_vae refuses
  assert _listing(folder) == ['config.json']


def test_a_save_in_flight_is_the_fault_named_when_another_write_meets_the_full_disk(disk):
  # the save's threads take the space; the sample grid written meanwhile misses it, and would
  # fit once the unfinished save is removed: naming the grid would send the user the wrong way
  state = {'w': jnp.arange(64 * 1024, dtype=jnp.float32)}  # 256 KiB
  data = iter(grain.MapDataset.range(8).to_iter_dataset())
  checkpointer = ckpt_lib.Checkpointer(disk)
  fill(disk, leave=16 * 1024)
  png = os.path.join(disk, 'grid.png')
  noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
  with pytest.raises(files.DiskFull) as info:
    with checkpointer.closing_on_error():
      checkpointer.save(2, state, data)  # returns while orbax's threads write
      save_png(png, noise)
  assert info.value.what == 'checkpoint step 2', info.value.what
  assert info.value.path == os.path.join(disk, 'checkpoints', '2')
  grid_error = info.value.__cause__
  assert isinstance(grid_error, files.DiskFull) and grid_error.what == 'a sample grid'
  assert not os.path.exists(png) and ckpt_lib.complete_steps(disk) == []
  # any other error of the block is the one raised, the save still completes
  os.remove(os.path.join(disk, 'filler'))
  checkpointer = ckpt_lib.Checkpointer(disk)
  with pytest.raises(KeyError):
    with checkpointer.closing_on_error():
      checkpointer.save(3, state, data)
      raise KeyError('a bug')
  assert ckpt_lib.complete_steps(disk) == [3]


def test_checkpoint_on_a_full_disk_keeps_the_last_complete_one(disk):
  state = {'w': jnp.arange(64 * 1024, dtype=jnp.float32)}  # 256 KiB
  data = iter(grain.MapDataset.range(8).to_iter_dataset())
  checkpointer = ckpt_lib.Checkpointer(disk)
  checkpointer.save(1, state, data)
  checkpointer.wait()
  kept = {p: open(os.path.join(disk, p), 'rb').read() for p in _listing(disk)}
  fill(disk, leave=64 * 1024)
  step_dir = os.path.join(disk, 'checkpoints', '2')

  def save_and_wait():  # the error may come from orbax's threads: then at the wait
    checkpointer.save(2, {'w': state['w'] + 1}, data)
    checkpointer.wait()

  _raises_disk_full(save_and_wait, 'checkpoint step 2', step_dir)
  checkpointer.close_after_error()
  # the unfinished save's folder is gone, the complete one byte for byte as it was
  assert sorted(os.listdir(os.path.join(disk, 'checkpoints'))) == ['1']
  assert ckpt_lib.complete_steps(disk) == [1]
  for path, content in kept.items():
    assert open(os.path.join(disk, path), 'rb').read() == content, path
  os.remove(os.path.join(disk, 'filler'))
  again = ckpt_lib.Checkpointer(disk)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)
  restored = again.restore_latest(target)
  again.close()
  np.testing.assert_array_equal(restored['w'], state['w'])


# tensorstore's done-callback of an awaited write that ends after its asyncio loop is closed,
# as orbax leaves the other writes of a save that met a full disk; then an unrelated report
_ABANDONED_WRITE = textwrap.dedent("""
    import asyncio, sys
    import tensorstore as ts
    from diffdis_jax.core import files
    if sys.argv[1] == 'quiet':
      files.quiet_abandoned_writes()
    promise, future = ts.Promise.new()
    loop = asyncio.new_event_loop()
    async def wait():
      await future
    task = loop.create_task(wait())
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    promise.set_result(1)
    class Unrelated:
      def __del__(self):
        raise ValueError('an unrelated report')
    Unrelated()
    print('finished', file=sys.stderr)
""")


@pytest.mark.parametrize('mode', ['quiet', 'default'])
def test_writes_abandoned_by_a_failed_save_print_no_traceback(mode):
  proc = subprocess.run([sys.executable, '-c', _ABANDONED_WRITE, mode], capture_output=True,
                        text=True, timeout=120, check=True)
  abandoned = 'RuntimeError: Event loop is closed' in proc.stderr
  assert abandoned == (mode == 'default'), proc.stderr
  assert 'ValueError: an unrelated report' in proc.stderr  # other reports still show
  assert 'finished' in proc.stderr
