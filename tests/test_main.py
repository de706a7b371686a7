"""launch/main.py answers bad input with one line and exit status 2, writing nothing."""
import os
import pickle
import subprocess
import sys

import numpy as np
import safetensors.numpy

from forked_main import run_forked

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = '--config=configs/demo.py'
VAE = '--config=configs/fmnist_vae.py'
OFFICIAL = '--config=configs/dit_xl_official.py'
FMNIST_DIFFDIS = '--config=configs/fmnist_diffdis.py'
DEMO_DIFFDIS = '--config=configs/demo_diffdis.py'
GENERATOR = '--config.init.pretrained_generator={files}/'

# (arguments, words the one line must contain)
BAD_INPUTS = [
    (['--config=configs/nope.py'], 'not found'),
    ([], '--config is required'),
    ([DEMO, '--config.nope=1'], "no field 'nope'"),
    ([DEMO, '--config.model.nope=1'], "no field 'nope'"),
    ([DEMO, '--config.total_steps=abc'], 'total_steps'),
    ([DEMO, '--config.total_steps=0'], 'total_steps must be a positive integer'),
    ([DEMO, '--config.total_steps=-5'], 'total_steps must be a positive integer'),
    ([DEMO, '--config.batch_size=0'], 'batch_size must be a positive integer'),
    ([DEMO, '--config.batch_size=12'], 'not divisible by the data-parallel size 8'),
    ([DEMO, '--config.mesh.data=16'], 'devices are available'),
    ([DEMO, '--config.method=nope'], 'method'),
    ([DEMO, '--config.model.name=DiT-Q/3'], 'unknown model name'),
    ([DEMO, '--config.sddit.teacher_sigma=nope'], 'sddit.teacher_sigma'),
    ([DEMO, '--config.sddit.mask_ratio=1.0'], 'mask_ratio'),
    ([DEMO, '--config.final_phase.fraction=1.0'], 'final_phase.fraction must be in [0, 1)'),
    ([DEMO, '--config.final_phase.fraction=0.1', '--config.final_phase.lr=0.0'],
     'final_phase.lr must be a positive number'),
    ([DEMO, '--config.sddit.final_phase_dis_weight=0.0'],
     'sddit.final_phase_dis_weight applies to the final phase, and there is none'),
    ([DEMO, '--config.final_phase.fraction=0.1', '--config.sddit.final_phase_dis_weight=-1.0'],
     'sddit.final_phase_dis_weight must be >= 0'),
    ([DEMO, '--config.sddit.teacher_temp=0.0'], 'sddit.teacher_temp must be in'),
    ([DEMO, '--config.sddit.student_temp=-1.0'], 'sddit.student_temp must be in'),
    ([DEMO, '--config.sddit.center_momentum=1.5'], 'sddit.center_momentum must be in [0.0, 1.0]'),
    ([DEMO, '--config.sddit.teacher_temp_warmup_steps=-3'],
     'sddit.teacher_temp_warmup_steps must be an integer >= 0'),
    ([DEMO, '--config.model.head.out_dim=0'], 'model.head.out_dim must be a positive integer'),
    (['--config=configs/sddit_xl.py'], 'dataset latents not found'),
    (['--config=configs/dit_xl.py', '--config.data.dir=/does/not/exist'], 'not found'),
    ([DEMO, '--mode=nope'], 'mode'),
    ([DEMO, '--config.batch_size=-8'], 'batch_size must be a positive integer'),
    ([DEMO, '--config.keep_checkpoints=0'], 'keep_checkpoints must be a positive integer'),
    ([DEMO, '--config.preemption_check_every=0'], 'preemption_check_every must be a positive'),
    ([DEMO, '--config.optim.lr=-0.001'], 'optim.lr must be a positive number'),
    ([DEMO, '--config.optim.lr=fast'], 'optim.lr'),
    ([DEMO, '--config.nonfinite=nope'], 'nonfinite'),
    ([DEMO, '--config.compute_dtype=bf16'], 'pass --config.compute_dtype=bfloat16'),
    ([DEMO, '--config.ema_decay=1.5'], 'ema_decay'),
    ([DEMO, '--config.model.attention_impl=flash'], 'model.attention_impl'),
    ([DEMO, '--config.model.remat=yes'], 'model.remat'),
    ([DEMO, '--config.mesh.expert=2'], "no field 'expert'"),
    ([DEMO, '--config.model.in_channels=3'], 'model.in_channels=1'),  # digits are grey
    ([DEMO, '--config.init.dit_weights={files}/missing.safetensors'], 'no such file'),
    ([DEMO, '--config.init.dit_weights={files}/dit.pt'], 'pickle checkpoint'),
    ([DEMO, '--config.init.dit_weights={files}/garbage.safetensors'], 'not a safetensors file'),
    ([DEMO, '--config.init.dit_weights={files}/dit_b2.safetensors'], 'does not fit model'),
    ([DEMO, '--workdir={files}/a_file'], 'is a file, not a directory'),
    ([DEMO, '--workdir={files}/a_file/run'], 'cannot be created'),
    ([DEMO, '--num_processes=two'], 'num_processes'),
    ([VAE, '--config.data.dir={files}'], 'Fashion-MNIST not found'),
    ([VAE, '--config.autoencoder.reconstruction=l3'], 'autoencoder.reconstruction'),
    ([VAE, '--config.autoencoder.kl_weight=-1.0'], 'autoencoder.kl_weight must be >= 0'),
    ([VAE, '--config.data.image_size=30'], 'a multiple of 4'),
    (['--config=configs/fmnist_sddit.py', '--mode=extract_latents',
      '--config.data.vae_path=/no/such/vae'], 'data.vae_path'),
    (['--config=configs/fmnist_sddit.py', '--config.data.dir={files}'],
     'holds no dataset_info.json'),
    ([DEMO, '--config.sample.parameterization=ddim'], 'sample.parameterization'),
    ([DEMO, '--config.sample.guidance_channels=2'], 'sample.guidance_channels'),  # 1 channel
    ([OFFICIAL, '--config.objective=flow'], 'does not fit objective'),  # learn_sigma: ddpm's
    ([DEMO, '--config.objective=vp'], "objective='vp' is not one of"),
    ([DEMO, '--config.objective=ddpm'], 'learn_sigma=False does not fit'),
    ([DEMO, '--config.objective=flow', '--config.sample.solver=ancestral'],
     "sample.solver='ancestral' does not belong to objective='flow'"),
    ([DEMO, '--config.sample.parameterization=flow'], "does not belong to objective='edm'"),
    ([DEMO, '--mode=export'], 'not exportable as a DiTTransformer2DModel'),  # MaskDiT layout
    ([DEMO, '--mode=export', '--config.model.decoder_mode=split',
      '--config.model.time_freq_shift=1'], 'no checkpoint under'),
    ([OFFICIAL, '--config.sample.respacing=ddim999'], 'sample.respacing'),
    ([OFFICIAL, '--config.sample.solver=heun'], 'sample.solver'),
    ([FMNIST_DIFFDIS, '--config.diffdis.context_length=77'], 'context_length=14'),
    ([FMNIST_DIFFDIS, '--config.data.dir={files}'], 'holds no dataset_info.json'),
    ([DEMO_DIFFDIS, '--config.text_encoder.positives=both'], 'text_encoder.positives'),
    # a pretrained start (init.pretrained_generator): missing, of another UNet or objective,
    # or conditioned on another text encoder
    ([DEMO_DIFFDIS, GENERATOR + 'no_generator'], 'holds no checkpoint'),
    ([DEMO_DIFFDIS, GENERATOR + 'generator', '--config.model.layers_per_block=2'],
     'model.layers_per_block=1 there, 2 here'),
    ([DEMO_DIFFDIS, GENERATOR + 'aligned'], 'is not a generation-only DiffDis run'),
    ([DEMO_DIFFDIS, GENERATOR + 'generator', '--config.text_encoder.seed=1'],
     'does not fit this config'),
]


def _env():
  return dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
              JAX_PLATFORMS='cpu')


def _with_workdir(args, workdir):
  """`args` with --workdir=`workdir` added, unless they name one (or `workdir` is None)."""
  if workdir and not any(a.startswith('--workdir=') for a in args):
    return [*args, f'--workdir={workdir}']
  return list(args)


def _run(args, workdir):
  return subprocess.run([sys.executable, 'launch/main.py', *_with_workdir(args, workdir)],
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)


class _Unpickled:
  """Unpickling this creates the file `path`: a loader that unpickles leaves evidence."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, 'w'))


def _bad_files(folder):
  """The files the table names: weights of the wrong kinds, a file where a workdir should be."""
  folder.mkdir()
  with open(folder / 'dit.pt', 'wb') as f:
    pickle.dump({'x_embedder.proj.weight': _Unpickled(str(folder / 'UNPICKLED'))}, f)
  (folder / 'garbage.safetensors').write_bytes(b'\x80\x04 not a safetensors header')
  # DiT-B/2 shapes (width 768, depth 12) where the demo is width 96, depth 4
  b2 = {'x_embedder.proj.weight': np.zeros((768, 1, 2, 2), np.float32),
        'y_embedder.embedding_table.weight': np.zeros((11, 768), np.float32)}
  b2.update({f'blocks.{i}.attn.qkv.bias': np.zeros((3 * 768,), np.float32) for i in range(12)})
  safetensors.numpy.save_file(b2, str(folder / 'dit_b2.safetensors'))
  (folder / 'a_file').write_text('not a directory')
  for name, align_mode in (('generator', 'none'), ('aligned', 'diffusion')):
    _generator_files(folder / name, align_mode)
  return folder


def _generator_files(workdir, align_mode):
  """What a DiffDis run of configs/demo_diffdis.py leaves in its workdir, as far as the
  checks of init.pretrained_generator read it: its config, a step folder, its text encoder."""
  from configs import demo_diffdis  # pylint: disable=g-import-not-at-top
  from diffdis_jax.tasks.diffdis.sources import SOURCES  # pylint: disable=g-import-not-at-top
  config = demo_diffdis.get_config()
  config.diffdis.align_mode = align_mode
  (workdir / 'checkpoints' / '600').mkdir(parents=True)
  (workdir / 'config.json').write_text(config.to_json_best_effort())
  (workdir / 'text_encoder').mkdir()
  name = SOURCES['captioned_digits'].text_encoder_file(config)
  (workdir / 'text_encoder' / name).write_bytes(b'')


def _snapshot(folder):
  """{relative path: bytes} of every file under `folder` (None for a folder)."""
  out = {}
  for root, dirs, names in os.walk(folder):
    for name in dirs + names:
      path = os.path.join(root, name)
      out[os.path.relpath(path, folder)] = (None if os.path.isdir(path)
                                            else open(path, 'rb').read())
  return out


def test_bad_inputs_get_one_line_and_nothing_is_written(tmp_path):
  assert len(BAD_INPUTS) >= 24
  files = _bad_files(tmp_path / 'files')
  before = _snapshot(files)
  cases = [([a.replace('{files}', str(files)) for a in args], words)
           for args, words in BAD_INPUTS]
  workdirs = []
  for i in range(len(BAD_INPUTS)):
    w = tmp_path / f'w{i}'
    w.mkdir()
    (w / 'keep.txt').write_text('precious')
    workdirs.append(w)
  # each case in a process forked after the imports (tests/forked_main.py): the same answers
  # as `_run`'s, a tenth of the start-up
  results = run_forked([_with_workdir(args, w) for (args, _), w in zip(cases, workdirs)],
                       tmp_path, _env())
  for (args, words), w, r in zip(cases, workdirs, results):
    lines = [l for l in r['stderr'].splitlines() if l.strip()]
    assert r['returncode'] != 0, (args, r['stderr'])
    assert len(lines) == 1 and lines[0].startswith(('error:', 'FATAL')), (args, r['stderr'])
    assert words in lines[0], (args, lines[0])
    assert sorted(os.listdir(w)) == ['keep.txt'] and (w / 'keep.txt').read_text() == 'precious'
  assert _snapshot(files) == before  # nothing unpickled, nothing written beside the files


def test_missing_workdir_flag(tmp_path):
  r = _run([DEMO], None)
  assert r.returncode == 2 and r.stderr.strip() == 'error: --workdir is required, e.g. --workdir=/tmp/demo'
