"""The Flax FID Inception against pytorch-fid's InceptionV3 (torch CPU) on random weights.

pytorch-fid imports torchvision; see diffdis_jax/torch_peers.py for how PyPI's torchvision is made
to import beside the CPU torch (conftest.py does it before any test imports torch libraries).

pytorch-fid fetches its weights from the network inside `InceptionV3()`; the test hands it random
weights instead (its strict `load_state_dict` then checks our key list against its network).
"""
import flax
import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffdis_jax.nn import inception as inc
from diffdis_jax.torch_peers import prepare_torchvision

def _import_pytorch_fid():
  prepare_torchvision()
  from pytorch_fid import inception as pytorch_fid_inception  # pylint: disable=g-import-not-at-top
  return pytorch_fid_inception


def _random_state_dict(seed=0):
  """Random weights under pytorch-fid's key names, scaled so activations stay O(1)."""
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(inc.abstract_variables())
  state = {}
  for (col, *path), leaf in sorted(flat.items()):
    shape = tuple(leaf.shape)
    name = '.'.join(path[:-1])
    if path[-1] == 'kernel':  # conv (kh, kw, in, out) -> (out, in, kh, kw)
      fan_in = shape[0] * shape[1] * shape[2]
      w = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
      state[f'{name}.weight'] = w.transpose(3, 2, 0, 1)
    elif path[-1] == 'fc_kernel':
      state['fc.weight'] = rng.normal(0, 0.05, shape).T
    elif path[-1] == 'fc_bias':
      state['fc.bias'] = rng.normal(0, 1.0, shape)
    else:
      torch_leaf = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
                    'var': 'running_var'}[path[-1]]
      value = {'scale': lambda: rng.uniform(0.5, 1.5, shape),
               'bias': lambda: rng.normal(0, 0.2, shape),
               'mean': lambda: rng.normal(0, 0.2, shape),
               'var': lambda: rng.uniform(0.5, 2.0, shape)}[path[-1]]()
      state[f'{name}.{torch_leaf}'] = value
  return {k: torch.tensor(np.ascontiguousarray(v), dtype=torch.float32) for k, v in state.items()}


@pytest.fixture(scope='module')
def torch_and_flax():
  pfi = _import_pytorch_fid()
  state = _random_state_dict()
  calls = []

  def fake_download(url, progress=True):  # pytorch-fid's weights come from the network
    calls.append(url)
    return {k: v.clone() for k, v in state.items()}

  mp = pytest.MonkeyPatch()
  mp.setattr(pfi, 'load_state_dict_from_url', fake_download)
  try:
    # strict load_state_dict: our key list covers pytorch-fid's network exactly
    model = pfi.InceptionV3([3], resize_input=True, normalize_input=True).eval()
  finally:
    mp.undo()
  assert calls == [pfi.FID_WEIGHTS_URL]
  return pfi, model, state, inc.convert_torch_state_dict(state)


def test_matches_pytorch_fid(torch_and_flax):
  _, model, state, variables = torch_and_flax
  images = np.random.default_rng(1).uniform(0, 1, (2, 64, 80, 3)).astype(np.float32)

  spatial = []
  hook = model.blocks[2][6].branch1x1.register_forward_hook(  # Mixed_6d.branch1x1
      lambda mod, inp, out: spatial.append(out))
  with torch.no_grad():
    (pool,) = model(torch.from_numpy(images).permute(0, 3, 1, 2))
  hook.remove()
  pool = pool[:, :, 0, 0]
  logits = pool @ state['fc.weight'].T + state['fc.bias']
  want_spatial = spatial[0].permute(0, 2, 3, 1)[..., :7].reshape(2, -1)

  net = inc.InceptionV3(preprocess='pytorch_fid', value_range=(0.0, 1.0))
  got = jax.jit(net.apply)(variables, images)
  assert got['pool'].shape == (2, 2048) and got['spatial'].shape == (2, 17 * 17 * 7)
  assert float(pool.abs().mean()) > 0.1  # the comparison is not between near-zero features
  np.testing.assert_allclose(got['pool'], pool.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got['spatial'], want_spatial.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got['logits'], logits.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got['logits'] - got['logits_unbiased'],
                             np.broadcast_to(state['fc.bias'].numpy(), (2, 1008)), atol=1e-5)


@pytest.mark.parametrize('size', [(5, 7), (64, 80), (512, 300)])
def test_pytorch_resize_matches_interpolate(size):
  x = np.random.default_rng(0).normal(size=(1, *size, 2)).astype(np.float32)
  want = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299),
                       mode='bilinear', align_corners=False).permute(0, 2, 3, 1).numpy()
  got = inc.resize_bilinear(x, 299, 'pytorch_fid')
  # 1-ulp differences in a float32 source coordinate (fused multiply-add in torch's kernel)
  # move a value by up to ~2e-5 where neighbouring pixels differ by ~2.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize('size', [(5, 7), (256, 256), (512, 300)])
def test_adm_resize_matches_tensorflow_resize_bilinear(size):
  """ADM's graph resizes with TF1 ResizeBilinear (align_corners=False, no half-pixel centres)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (the tf extra installs it)
  x = np.random.default_rng(0).uniform(0, 255, (1, *size, 3)).astype(np.float32)
  want = tf.compat.v1.image.resize_bilinear(x, (299, 299), align_corners=False,
                                            half_pixel_centers=False).numpy()
  np.testing.assert_allclose(inc.resize_bilinear(x, 299, 'adm'), want, rtol=0, atol=1e-4)


def test_adm_resize_is_tf1_legacy_bilinear():
  # TF1 ResizeBilinear (no half-pixel centres), 2 -> 4: sources at 0, 0.5, 1, 1.5 (clamped).
  np.testing.assert_allclose(inc.resize_matrix(2, 4, 'adm'),
                             [[1, 0], [0.5, 0.5], [0, 1], [0, 1]])
  # 3 -> 2: sources 0 and 1.5
  np.testing.assert_allclose(inc.resize_matrix(3, 2, 'adm'), [[1, 0, 0], [0, 0.5, 0.5]])
  # PyTorch half-pixel, 2 -> 4: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped high)
  np.testing.assert_allclose(inc.resize_matrix(2, 4, 'pytorch_fid'),
                             [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])


def test_adm_preprocessing_of_uint8():
  # ADM feeds [0, 255] to the graph, which resizes and maps x -> (x - 128) / 128.
  img = np.full((1, 299, 299, 3), 64, np.uint8)
  got = inc.InceptionV3(preprocess='adm').normalize(img)
  np.testing.assert_allclose(got, (64 - 128) / 128, atol=1e-7)
  got = inc.InceptionV3(preprocess='pytorch_fid').normalize(img)
  np.testing.assert_allclose(got, 2 * 64 / 255 - 1, atol=1e-6)


def test_converter_reports_bad_keys(torch_and_flax):
  state = dict(torch_and_flax[2])
  del state['Mixed_7c.branch_pool.conv.weight']
  state['AuxLogits.fc.weight'] = torch.zeros(3, 3)
  with pytest.raises(ValueError, match=r'missing .*Mixed_7c/branch_pool/conv/kernel.*'
                                       r'unexpected .*AuxLogits\.fc\.weight'):
    inc.convert_torch_state_dict(state)


def test_loads_safetensors(tmp_path, torch_and_flax):
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  state = torch_and_flax[2]
  save_file(state, str(tmp_path / 'inception.safetensors'))
  loaded = inc.load_inception_variables(str(tmp_path / 'inception.safetensors'))
  want = torch_and_flax[3]
  jax.tree.map(np.testing.assert_array_equal, loaded, want)
