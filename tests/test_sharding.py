"""Sharding over the (data, fsdp, tensor) mesh on the 8 virtual CPU devices.

One float32 train step on several meshes equals the step on one device; fsdp really splits the
parameters and optimizer state; a checkpoint written on 8 devices resumes on 2 and continues
as the uninterrupted run does. Compiles are the cost here (tens of seconds each on 2 cores),
so every mesh compiles the step once and the cheap checks use no compile at all.
"""
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import FAST_COMPILE, tiny_sddit_config
from diffdis_jax.parallel import footprint
from diffdis_jax.parallel import mesh as mesh_lib
from diffdis_jax.modes.run import build_trainer
from diffdis_jax.train.metrics_log import read_metrics

MESHES = [(8, 1, 1), (2, 4, 1), (1, 8, 1), (2, 2, 2)]
TOL = 1e-5


def _config(shape, **overrides):
  # warmup 0: with the demo's warmup the first update has a learning rate of 0 and would
  # leave the parameters unchanged, which would make the comparison of parameters vacuous.
  # The split decoder (the stack's last block decodes) compiles a third faster than a
  # separate one and keeps every kind of parameter: stack, teacher, head, centres.
  data, fsdp, tensor = shape
  return tiny_sddit_config(**{
      'mesh.data': data, 'mesh.fsdp': fsdp, 'mesh.tensor': tensor, 'optim.warmup_steps': 0,
      'model.decoder_mode': 'split', 'model.decoder_depth': 1,
      'eval.metric_samples': 0, 'sample_every': 1000, 'log_every': 1, **overrides})


def _trainer(config, workdir, devices=None):
  trainer = build_trainer(config, str(workdir), devices=devices)
  trainer.compiler_options = FAST_COMPILE  # every run here compiles the same way
  return trainer


def _host_zeros_state(trainer):
  # the layout checks need shapes only: zeros cost no compile
  return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), trainer.abstract_state)


def _assert_close(actual, expected, what):
  pairs = zip(jax.tree_util.tree_flatten_with_path(jax.device_get(actual))[0],
              jax.tree.leaves(expected))
  for (path, a), e in pairs:
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=TOL, atol=TOL,
                               err_msg=f'{what}: {jax.tree_util.keystr(path)}')


def test_fsdp_splits_parameters_and_optimizer_state_eightfold(tmp_path):
  # width 256 (no compile here, so size is free): biases of tensor-split layers are not split
  # by fsdp, and at width 32 they would be a seventh of the model instead of under 1%
  wide = {'model.width': 256, 'model.decoder_width': 256, 'model.num_heads': 4,
          'model.decoder_heads': 4, 'model.head': dict(hidden=256, bottleneck=64, out_dim=256,
                                                       num_layers=3)}
  trainer = build_trainer(_config((1, 8, 1), **wide), str(tmp_path))
  mesh_lib.check_divisible(trainer.abstract_state, trainer.state_shardings)
  state = jax.device_put(_host_zeros_state(trainer), trainer.state_shardings)
  for part in ('params', 'opt_state', 'ema_params', 'aux'):
    tree, shardings = getattr(state, part), getattr(trainer.state_shardings, part)
    total = footprint.total_bytes(tree)
    per_device = [footprint.addressable_bytes(tree, d) for d in jax.devices()]
    assert len(set(per_device)) == 1, (part, per_device)
    # exactly: an eighth of every split leaf plus the whole of the unsplit ones
    replicated = sum(x.nbytes for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))
                     if s.is_fully_replicated)
    assert per_device[0] == (total - replicated) / 8 + replicated, part
    assert total / 8 <= per_device[0] <= 1.03 * total / 8, (part, per_device[0], total)
    assert per_device[0] == footprint.abstract_bytes_per_device(
        getattr(trainer.abstract_state, part), shardings)


def test_tensor_axis_splits_heads_and_the_batch_goes_over_data_and_fsdp(tmp_path):
  trainer = build_trainer(_config((2, 2, 2)), str(tmp_path))
  state = jax.device_put(_host_zeros_state(trainer), trainer.state_shardings)
  flat = {jax.tree_util.keystr(p): x for p, x in
          jax.tree_util.tree_flatten_with_path(state.params)[0]}
  query = [x for k, x in flat.items() if "'query'" in k and k.endswith("['kernel']")]
  fc1 = [x for k, x in flat.items() if "'fc1'" in k and k.endswith("['kernel']")]
  assert query and fc1, sorted(flat)[:20]
  # (embed, heads) = (32, 32) -> fsdp halves embed, tensor halves heads
  assert {x.addressable_shards[0].data.shape for x in query} == {(16, 16)}
  assert {x.addressable_shards[0].data.shape for x in fc1} == {(16, 64)}  # (32, 128) / (2, 2)
  batch = trainer.shard(next(trainer.data_iterator()))
  image = batch['image']
  assert image.shape[0] == 8 and image.addressable_shards[0].data.shape[0] == 2
  # devices that differ only in their tensor coordinate hold the same rows
  rows = {}
  for shard in image.addressable_shards:
    rows.setdefault(shard.index[0].start, []).append(shard.device)
  assert len(rows) == 4 and all(len(d) == 2 for d in rows.values())


def test_a_width_the_mesh_does_not_divide_is_named_before_compiling(tmp_path):
  with pytest.raises(mesh_lib.MeshError, match=r"of 36 split over mesh axes \('fsdp',\) of size 8"):
    build_trainer(_config((1, 8, 1), **{'model.width': 36}), str(tmp_path))
  assert mesh_lib.parse_mesh_flag('fsdp:8') == {'data': 1, 'fsdp': 8, 'tensor': 1}


def test_mesh_must_use_every_device():
  with pytest.raises(mesh_lib.MeshError, match='8 devices'):
    mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=1))
  assert mesh_lib.resolve_mesh_shape(dict(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)


def test_one_step_on_each_mesh_matches_one_device(tmp_path):
  one = _trainer(_config((1, 1, 1)), tmp_path / 'one', devices=jax.devices()[:1])
  initial = jax.device_get(one.init_state())
  batch = next(one.data_iterator())
  expected, expected_metrics = one.compile_step()(
      jax.device_put(initial, one.state_shardings), one.shard(batch))
  expected, expected_loss = jax.device_get(expected), float(expected_metrics['loss'])
  moved = np.abs(np.asarray(jax.tree.leaves(expected.params)[0]) -
                 np.asarray(jax.tree.leaves(initial.params)[0])).max()
  assert moved > 1e-4  # the step changed the parameters: the comparison means something

  for shape in MESHES:
    trainer = _trainer(_config(shape), tmp_path / 'x'.join(map(str, shape)))
    assert tuple(trainer.mesh.shape.values()) == shape
    state = jax.device_put(initial, trainer.state_shardings)
    new, metrics = trainer.compile_step()(state, trainer.shard(batch))
    assert abs(float(metrics['loss']) - expected_loss) <= TOL * max(1.0, abs(expected_loss)), (
        shape, float(metrics['loss']), expected_loss)
    # the output keeps the state's layout (no silent gather to one device)
    for leaf, sharding in zip(jax.tree.leaves(new), jax.tree.leaves(trainer.state_shardings)):
      assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), shape
    _assert_close(new, expected, f'mesh {shape}')


def test_checkpoint_from_eight_devices_resumes_on_two(tmp_path):
  # an fsdp-8 run trains 2 steps, saving after each; a copy of its workdir with only the
  # step-1 checkpoint resumes on 2 devices (data 1, fsdp 2) and must reach the same step 2
  # total_steps is the config's, as in the one-step test: its fsdp-8 step comes from the
  # session's compilation cache (the step depends on total_steps, checkpoint_every does not)
  eight, two = str(tmp_path / 'eight'), str(tmp_path / 'two')
  overrides = {'checkpoint_every': 1}
  state8 = _trainer(_config((1, 8, 1), **overrides), eight).train(stop_at=2)
  shutil.copytree(eight, two)
  shutil.rmtree(os.path.join(two, 'checkpoints', '2'))

  trainer2 = _trainer(_config((1, 2, 1), **overrides), two, devices=jax.devices()[:2])
  state2 = trainer2.train(stop_at=2)
  assert int(state2.step) == 2
  assert {d for leaf in jax.tree.leaves(state2) for d in leaf.sharding.device_set} == set(
      jax.devices()[:2])
  _assert_close(state2, jax.device_get(state8), 'resumed on 2 devices')
  # the resumed run read the same step-2 batch: its logged loss is the 8-device run's
  loss = lambda w: {r['step']: r['loss'] for r in read_metrics(w) if 'loss' in r}
  a, b = loss(eight), loss(two)
  assert sorted(b) == [1, 2] and a[1] == b[1]
  assert abs(a[2] - b[2]) <= TOL * max(1.0, abs(a[2])), (a, b)


@pytest.mark.parametrize('shape', [(1, 8, 1), (2, 2, 2)])
def test_no_collective_moves_a_global_batch_sized_tensor(tmp_path, shape):
  # The activation constraints (nn/layers.py `constrain`) keep every batch-sized tensor split
  # over data x fsdp. Without them XLA replicated the masked student's gathered tokens, the
  # scatter back into the decoder and the conditioning vector across devices: all-reduces and
  # all-gathers of the whole global batch, a cost that does not shrink with more devices.
  # A global batch of 48 is a size no parameter here has, so any collective whose result has
  # a dimension of 48 carries the global batch. (The full separate decoder and the mask are on.)
  # Integer tensors are exempt: XLA gathers the class ids (4 bytes an image) for the lookup in
  # the fsdp-split label table, which is cheaper than gathering the table.
  global_batch = 48
  config = _config(shape, batch_size=global_batch, **{'model.decoder_mode': 'separate'})
  hlo = _trainer(config, tmp_path).compile_step().as_text()
  offenders = [(kind, shapes) for kind, shapes in footprint.collectives(hlo)
               if any(global_batch in dims and dtype[0] in 'fb' for dtype, dims in shapes)]
  assert not offenders, offenders
  assert footprint.collectives(hlo), 'the sharded step has no collectives at all?'
