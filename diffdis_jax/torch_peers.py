"""Lets PyPI's torchvision import beside the CPU-only torch 2.13 wheel.

PyPI's torchvision is built against CUDA torch: next to the CPU torch its C++ extension cannot
load (libc10_cuda.so is missing). torchvision lives without the extension
(`extension._has_ops()` is then False), except that its `_meta_registrations.py` registers fake
kernels for `torchvision::nms`/`qnms` unconditionally, which fails with "operator
torchvision::nms does not exist". `prepare_torchvision` declares those two operator schemas
(what the extension would have done) only when the extension cannot load. transformers and
diffusers import torchvision when it is installed, so tests (conftest.py) and benchmarks call
this before importing them. Only the tests and benchmarks use torch; the package does not.
"""
import glob
import importlib.util
import os
import sys

import torch

_TORCHVISION_OPS = []  # keeps the torch.library fragment alive


def _torchvision_has_op(name):
  try:
    getattr(torch.ops.torchvision, name)
    return True
  except (AttributeError, RuntimeError):
    return False


def prepare_torchvision():
  """Lets PyPI's (CUDA-built) torchvision import beside the CPU torch; a no-op where it loads.

  Must run before anything imports torchvision: transformers and diffusers import it when it is
  installed, so with torchvision in the environment this belongs in conftest.py.
  """
  if 'torchvision' in sys.modules or _torchvision_has_op('nms'):
    return
  spec = importlib.util.find_spec('torchvision')
  assert spec is not None, 'the test extra installs torchvision==0.28.0 and pytorch-fid==0.3.0'
  try:
    torch.ops.load_library(glob.glob(os.path.join(spec.submodule_search_locations[0], '_C*.so'))[0])
  except (OSError, IndexError):
    # The two schemas that torchvision's _meta_registrations.py registers fake kernels for
    # whether or not its extension loaded; the model code never calls them.
    lib = torch.library.Library('torchvision', 'FRAGMENT')
    lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    lib.define('qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    _TORCHVISION_OPS.append(lib)


