"""Fréchet distance, Inception Score, precision/recall and reference files (eval/fid.py)."""
import math
import warnings

import jax
import numpy as np
import pytest

from diffdis_jax.eval import fid
from diffdis_jax.eval import precision_recall as pr
from diffdis_jax.nn import inception


def _stats(mu, sigma):
  return fid.Statistics(np.asarray(mu, float), np.asarray(sigma, float))


# ----------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_hand_computed():
  # |mu1 - mu2|^2 = 1 + 4; tr S1 + tr S2 = 5 + 13; tr sqrt(S1 S2) = sqrt(4) + sqrt(36) = 8.
  a = _stats([0, 0], np.diag([1.0, 4.0]))
  b = _stats([1, 2], np.diag([4.0, 9.0]))
  assert fid.frechet_distance(a, b) == pytest.approx(5 + 18 - 2 * 8, abs=1e-12)
  # 1-D: (0 - 3)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 10
  assert fid.frechet_distance(_stats([0], [[1.0]]), _stats([3], [[4.0]])) == pytest.approx(10.0)


def test_frechet_distance_non_commuting_matches_eigen_formula():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(200, 6)), rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
  a, b = fid.Statistics.from_activations(x), fid.Statistics.from_activations(y)
  # tr sqrt(S1 S2) = sum of sqrt eigenvalues of S1^1/2 S2 S1^1/2 (symmetric, so eigh)
  w, v = np.linalg.eigh(a.sigma)
  half = v @ np.diag(np.sqrt(w)) @ v.T
  tr = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(half @ b.sigma @ half), 0, None)))
  want = np.sum((a.mu - b.mu) ** 2) + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr
  assert fid.frechet_distance(a, b) == pytest.approx(want, rel=1e-9)
  assert a.mu.dtype == np.float64 and a.sigma.dtype == np.float64


@pytest.mark.parametrize('n,d', [(500, 16), (40, 64)])  # full rank, and fewer samples than dims
def test_frechet_distance_zero_for_identical_statistics(n, d):
  acts = np.random.default_rng(1).normal(size=(n, d)).astype(np.float32)
  s = fid.Statistics.from_activations(acts)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    assert abs(fid.frechet_distance(s, s)) < 1e-6 * np.trace(s.sigma)


def test_frechet_distance_retries_bad_sqrtm_then_raises(monkeypatch):
  a, b = _stats([0, 0], np.eye(2)), _stats([1, 0], 4 * np.eye(2))
  real_sqrtm, calls = fid.linalg.sqrtm, []

  def flaky(m):  # first call fails, as sqrtm does on a near-singular product
    calls.append(m.copy())
    return np.full_like(m, np.nan) if len(calls) == 1 else real_sqrtm(m)

  monkeypatch.setattr(fid.linalg, 'sqrtm', flaky)
  with pytest.warns(UserWarning, match='not finite'):
    got = fid.frechet_distance(a, b, eps=1e-6)
  assert len(calls) == 2 and calls[1][0, 0] == pytest.approx((1 + 1e-6) * (4 + 1e-6))
  assert got == pytest.approx(1 + 2 + 8 - 2 * 4, abs=1e-5)

  monkeypatch.setattr(fid.linalg, 'sqrtm', lambda m: m + 1j * np.eye(len(m)))
  with pytest.warns(UserWarning), pytest.raises(FloatingPointError, match='imaginary'):
    fid.frechet_distance(a, b)
  monkeypatch.setattr(fid.linalg, 'sqrtm', lambda m: m)  # wrong root: m @ m != m
  with pytest.warns(UserWarning), pytest.raises(FloatingPointError, match='inaccurate'):
    fid.frechet_distance(a, b)


def test_frechet_distance_rejects_mismatched_statistics():
  with pytest.raises(ValueError, match='do not match'):
    fid.frechet_distance(_stats([0, 0], np.eye(2)), _stats([0, 0, 0], np.eye(3)))


# ----------------------------------------------------------------------------- Inception Score


def test_inception_score_hand_computed():
  uniform = np.zeros((4, 5))
  assert fid.inception_score(uniform) == pytest.approx(1.0)
  # p(y|x) = (0.9, 0.1) and (0.1, 0.9); marginal (0.5, 0.5):
  # KL = 0.9 ln(0.9 / 0.5) + 0.1 ln(0.1 / 0.5) for both samples.
  logits = np.log([[0.9, 0.1], [0.1, 0.9]])
  want = math.exp(0.9 * math.log(1.8) + 0.1 * math.log(0.2))
  assert fid.inception_score(logits) == pytest.approx(want, rel=1e-12)
  # Confident predictions spread evenly over C classes give C; a huge logit gives p = 0 exactly
  # elsewhere, which must not produce NaN.
  assert fid.inception_score(1e4 * np.eye(7)) == pytest.approx(7.0)
  # Splits are scored separately and averaged: [confident, 2 classes] and [uniform].
  two = np.concatenate([1e4 * np.eye(2), np.zeros((2, 2))])
  assert fid.inception_score(two, split_size=2) == pytest.approx((2.0 + 1.0) / 2)


# ----------------------------------------------------------------------------- precision/recall


def test_manifold_radii_hand_computed():
  points = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
  # third-nearest other point: 0 -> 6, 1 -> 6, 3 -> 6 (sorted 2, 3, 3, 7 -> 3), 6 -> 1, 10 -> 1
  np.testing.assert_allclose(pr.manifold_radii(points, k=3), [36, 25, 9, 25, 81])
  np.testing.assert_allclose(pr.manifold_radii(points, k=1), [1, 1, 4, 9, 16])


def test_precision_recall_hand_computed():
  real = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])  # k=1 radii^2: 1, 1, 1, 1, 49
  # fake radii^2 (k=1): 1, 1, 1; every fake is in a real ball; 10 is in no fake ball.
  assert pr.precision_recall(real, np.array([[0.5], [1.5], [2.5]]), k=1) == (1.0, 0.8)
  # 20 is 100 from 10 (> 49): not precise; its own radius (20 - 2.5)^2 covers 10, so recall 1.
  assert pr.precision_recall(real, np.array([[0.5], [1.5], [2.5], [20.0]]), k=1) == (0.75, 1.0)


def test_precision_recall_blocked_equals_brute_force():
  rng = np.random.default_rng(2)
  real = rng.normal(size=(37, 5)).astype(np.float32)
  fake = (rng.normal(size=(29, 5)) * 0.7 + 0.8).astype(np.float32)

  def brute(r, f, k=3):
    d = lambda u, v: ((u[:, None] - v[None]) ** 2).sum(-1)  # noqa: E731
    rr = np.sort(d(r, r), axis=1)[:, k]
    fr = np.sort(d(f, f), axis=1)[:, k]
    return (d(f, r) <= rr[None]).any(1).mean(), (d(r, f) <= fr[None]).any(1).mean()

  np.testing.assert_allclose(pr.manifold_radii(real, 3, block_size=8),
                             np.sort(((real[:, None] - real[None]) ** 2).sum(-1), 1)[:, 3],
                             rtol=1e-5)
  want = brute(real, fake)
  assert 0 < want[0] < 1 and 0 < want[1] < 1
  for block in (8, 16, 10000):
    assert pr.precision_recall(real, fake, block_size=block) == pytest.approx(want)


# ----------------------------------------------------------------------------- files, all metrics


def _activations(rng, n, shift=0.0):
  return {'pool': rng.normal(shift, 1, (n, 8)).astype(np.float32),
          'spatial': rng.normal(shift, 1, (n, 6)).astype(np.float32),
          'logits_unbiased': rng.normal(0, 3, (n, 10)).astype(np.float32)}


def test_compute_metrics_keys_and_sanity():
  rng = np.random.default_rng(3)
  ref = _activations(rng, 400)
  same = fid.compute_metrics(ref, ref)
  assert set(same) == {'fid', 'sfid', 'inception_score', 'precision', 'recall',
                       'num_samples', 'num_reference'}
  assert abs(same['fid']) < 1e-9 and abs(same['sfid']) < 1e-9
  assert same['precision'] == 1.0 and same['recall'] == 1.0
  far = fid.compute_metrics(_activations(rng, 300, shift=3.0), ref)
  assert far['fid'] > 60 and far['sfid'] > 45  # |mean shift|^2 = 9 per dimension
  assert far['precision'] < 0.2 and far['num_samples'] == 300


def test_reference_roundtrip_and_no_overwrite(tmp_path):
  acts = _activations(np.random.default_rng(4), 100)
  path = str(tmp_path / 'ref.npz')
  fid.save_reference(path, acts)
  with pytest.raises(FileExistsError):
    fid.save_reference(path, acts)
  ref = fid.read_reference(path)
  want = fid.Reference.from_activations(acts)
  np.testing.assert_array_equal(ref.pool, acts['pool'])
  np.testing.assert_allclose(ref.pool_stats.sigma, want.pool_stats.sigma)
  np.testing.assert_allclose(ref.spatial_stats.mu, want.spatial_stats.mu)


@pytest.mark.parametrize('compressed', [False, True])
def test_adm_reference_batch_streams_images(tmp_path, compressed):
  """ADM's layout: uint8 images in arr_0 and precomputed mu/sigma/mu_s/sigma_s."""
  images = np.random.default_rng(5).integers(0, 256, (23, 4, 4, 3), dtype=np.uint8)
  mu, sigma = np.arange(3.0), np.eye(3) * 2
  path = str(tmp_path / 'VIRTUAL_ref.npz')
  (np.savez_compressed if compressed else np.savez)(
      path, arr_0=images, mu=mu, sigma=sigma, mu_s=mu + 1, sigma_s=sigma)
  batches = list(fid.iter_npz_array(path, 'arr_0', batch_size=10))
  assert [len(b) for b in batches] == [10, 10, 3]
  np.testing.assert_array_equal(np.concatenate(batches), images)

  seen = []
  def features(batch):
    seen.append(len(batch))
    return {'pool': batch.reshape(len(batch), -1)[:, :3].astype(np.float32)}
  ref = fid.read_reference(path, features, batch_size=10)
  assert seen == [10, 10, 3]
  np.testing.assert_array_equal(ref.pool_stats.mu, mu)  # the file's statistics win
  np.testing.assert_array_equal(ref.spatial_stats.mu, mu + 1)
  np.testing.assert_array_equal(ref.pool, images.reshape(23, -1)[:, :3])
  with pytest.raises(KeyError, match='no array'):
    next(fid.iter_npz_array(path, 'arr_1'))


def test_evaluate_files_end_to_end(tmp_path):
  rng = np.random.default_rng(7)
  proj = rng.normal(size=(48, 24)).astype(np.float32)

  def features(batch):  # a stand-in for the Inception extractor: any batch -> activations
    x = batch.reshape(len(batch), -1).astype(np.float32) / 255 @ proj
    return {'pool': x[:, :8], 'spatial': x[:, 8:14], 'logits_unbiased': x[:, 14:]}

  images = rng.integers(0, 256, (120, 4, 4, 3), dtype=np.uint8)
  np.savez(tmp_path / 'ref.npz', arr_0=images)            # statistics computed from arr_0
  np.savez(tmp_path / 'same.npz', arr_0=images)
  np.savez(tmp_path / 'dark.npz', arr_0=images // 4)
  same = fid.evaluate_files(str(tmp_path / 'same.npz'), str(tmp_path / 'ref.npz'), features,
                            batch_size=50)
  assert abs(same['fid']) < 1e-6 and abs(same['sfid']) < 1e-6 and same['recall'] == 1.0
  dark = fid.evaluate_files(str(tmp_path / 'dark.npz'), str(tmp_path / 'ref.npz'), features)
  assert dark['fid'] > 1.0 and dark['num_samples'] == 120 and dark['inception_score'] >= 1.0


def test_to_uint8():
  np.testing.assert_array_equal(fid.to_uint8(np.array([-1.5, -1.0, 0.0, 0.999, 1.0])),
                                [0, 0, 128, 255, 255])


def test_inception_extractor_pads_batches():
  rng = np.random.default_rng(6)

  def init(path, leaf):  # He-scaled kernels and identity batch norms keep the signal alive
    name = path[-1].key
    if name in ('kernel', 'fc_kernel'):
      return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
    return np.full(leaf.shape, 1.0 if name in ('scale', 'var') else 0.0, np.float32)

  variables = jax.tree_util.tree_map_with_path(init, inception.abstract_variables())
  images = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
  # two devices (conftest makes 8 CPU ones): batches of 2 split 1 + 1, the last one padded
  extractor = fid.InceptionExtractor(variables, batch_size=2, devices=jax.local_devices()[:2])
  assert extractor.batch_size == 2
  got = extractor(images)
  assert {k: v.shape for k, v in got.items()} == {
      'pool': (3, 2048), 'spatial': (3, 2023), 'logits_unbiased': (3, 1008)}
  assert np.all(np.isfinite(got['pool'])) and np.ptp(got['pool'][:, 0]) > 0
  # Reversed order puts a different image into the padded batch: results follow the images.
  again = extractor(images[::-1])
  for key in got:
    np.testing.assert_allclose(again[key][::-1], got[key], rtol=1e-5, atol=1e-6)
