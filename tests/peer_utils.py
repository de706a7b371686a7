"""Helpers for the parity tests against the PyTorch peers (diffusers, transformers)."""
import numpy as np
import torch


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Overwrite every parameter with random values of a sensible scale, so that layers the
  peer initialises to zero (adaLN-Zero, output convs) or to one (norms) are exercised too.

  Matrices and kernels get std 1/sqrt(fan_in) (activations stay O(1) through depth), norm
  scales 1 + 0.1 N(0, 1), biases and norm shifts 0.1 N(0, 1).
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
      if p.ndim >= 2:
        p.copy_(noise / np.sqrt(np.prod(p.shape[1:])))
      elif name.endswith('weight'):
        p.copy_(1 + 0.1 * noise)
      else:
        p.copy_(0.1 * noise)
  return module.eval()


def state_dict_numpy(module: torch.nn.Module) -> dict:
  return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(x: torch.Tensor) -> np.ndarray:
  return x.detach().cpu().numpy().transpose(0, 2, 3, 1)


def assert_close(ours, theirs, tol: float = 1e-4):
  """Equal within `tol` absolute and relative (float32 parity)."""
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
  assert np.abs(theirs).max() > 1e-3, 'reference output is (nearly) zero: test is vacuous'
  np.testing.assert_allclose(ours, theirs, atol=tol, rtol=tol)
