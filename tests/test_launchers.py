"""The launchers: tpu_pod.sh's commands (dry run), slurm.sbatch's process layout (stub srun and
scontrol), and the Colab notebook executed end to end on CPU with a reduced step count."""
import os
import stat
import subprocess
import sys

import pytest

from conftest import ROOT

TPU_POD = os.path.join(ROOT, 'launch', 'tpu_pod.sh')
SBATCH = os.path.join(ROOT, 'launch', 'slurm.sbatch')
NOTEBOOK = os.path.join(ROOT, 'launch', 'colab_demo.ipynb')


def _stub(folder, name, body):
  path = os.path.join(folder, name)
  with open(path, 'w') as f:
    f.write('#!/bin/bash\n' + body)
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def _run(args, env=None, **kwargs):
  return subprocess.run(args, capture_output=True, text=True, timeout=60,
                        env=dict(os.environ, **(env or {})), **kwargs)


def test_tpu_pod_dry_run_prints_the_commands_and_runs_none(tmp_path):
  # a gcloud that records its calls: a dry run must make none
  _stub(str(tmp_path), 'gcloud', f'echo "$@" >> {tmp_path}/calls\n')
  env = {'PATH': f'{tmp_path}:{os.environ["PATH"]}'}
  out = _run(['bash', TPU_POD, '--name=sddit-pod', '--zone=us-east5-a', '--accelerator=v5p-64',
              '--dry-run', '--', '--config=configs/sddit_xl.py', '--workdir=/gcs/b/sddit',
              '--config.batch_size=512', "--config.data.dir=/gcs/b/it's here"], env)
  assert out.returncode == 0, out.stderr
  assert not os.path.exists(tmp_path / 'calls')
  lines = [l for l in out.stdout.splitlines() if l and not l.startswith('#')]
  tpu = 'gcloud compute tpus tpu-vm'
  assert lines[0] == f'{tpu} describe sddit-pod --zone=us-east5-a'
  assert lines[1] == (f'{tpu} create sddit-pod --zone=us-east5-a --accelerator-type=v5p-64 '
                      '--version=v2-alpha-tpuv5')
  assert lines[2].startswith(f'git -C {ROOT} archive')  # the local checkout, to every worker
  assert lines[3].startswith(f'{tpu} scp ') and lines[3].endswith('--worker=all')
  install, train = lines[4], lines[5]
  assert install.startswith(f'{tpu} ssh sddit-pod --zone=us-east5-a --worker=all ')
  assert "uv pip install" in install and 'jax[tpu]>=0.10.2,<0.12' in install
  assert train.startswith(f'{tpu} ssh sddit-pod --zone=us-east5-a --worker=all ')
  assert ('launch/main.py --config=configs/sddit_xl.py --workdir=/gcs/b/sddit '
          '--config.batch_size=512') in train
  assert len(lines) == 6
  # the printed lines are shell: the quoted argument survives a round trip through bash
  words = _run(['bash', '-c', 'printf "%s\\n" ' + train.split(' --worker=all ', 1)[1]])
  assert words.stdout.splitlines()[0].endswith("'--config.data.dir=/gcs/b/it'\\''s here'")

  cloned = _run(['bash', TPU_POD, '--name=p', '--zone=z', '--accelerator=v4-32', '--dry-run',
                 '--repo=https://example.com/diffdis_jax.git', '--ref=main', '--skip-install',
                 '--detach', '--', '--config=configs/demo.py', '--workdir=/w'], env)
  assert cloned.returncode == 0, cloned.stderr
  assert '--version=tpu-ubuntu2204-base' in cloned.stdout
  assert 'scp' not in cloned.stdout and 'uv pip' not in cloned.stdout  # --skip-install
  assert 'nohup' in cloned.stdout.splitlines()[-1]


@pytest.mark.parametrize('args, message', [
    (['--zone=z', '--', '--config=c', '--workdir=w'], '--name is required'),
    (['--name=n', '--zone=z', '--', '--workdir=w'], '--config'),
    (['--name=n', '--zone=z', '--accelerator=tpu9-8', '--', '--config=c', '--workdir=w'],
     '--version'),
    (['--name=n', '--zone=z', '--bogus'], 'unknown option --bogus'),
])
def test_tpu_pod_refuses_bad_arguments(args, message):
  out = _run(['bash', TPU_POD, '--dry-run', *args])
  assert out.returncode == 2 and message in out.stderr, out.stderr


def test_slurm_script_gives_each_process_its_id_and_the_first_node_as_coordinator(tmp_path):
  assert _run(['bash', '-n', SBATCH]).returncode == 0
  # stubs: scontrol lists two nodes; srun runs its command once per task with the task's
  # variables; the "python" prints the arguments it got
  _stub(str(tmp_path), 'scontrol', 'printf "gpu-node-07\\ngpu-node-08\\n"\n')
  _stub(str(tmp_path), 'srun', '\n'.join([
      'while [[ "$1" == --* ]]; do shift; done',
      'for i in 0 1; do SLURM_PROCID=$i SLURM_LOCALID=0 "$@" || exit 1; done']) + '\n')
  _stub(str(tmp_path), 'fakepython', 'echo "ARGS $*"\n')
  env = {'PATH': f'{tmp_path}:{os.environ["PATH"]}', 'SLURM_JOB_NODELIST': 'gpu-node-[07-08]',
         'SLURM_NTASKS': '2', 'SLURM_JOB_NUM_NODES': '2', 'DIFFDIS_ROOT': ROOT,
         'DIFFDIS_PYTHON': str(tmp_path / 'fakepython'), 'COORD_PORT': '23456'}
  out = _run(['bash', SBATCH, '--config=configs/sddit_xl.py', '--workdir=/shared/run a'], env)
  assert out.returncode == 0, out.stderr
  calls = [l for l in out.stdout.splitlines() if l.startswith('ARGS ')]
  assert calls == [
      f'ARGS launch/main.py --config=configs/sddit_xl.py --workdir=/shared/run a '
      f'--coordinator_address=gpu-node-07:23456 --num_processes=2 --process_id={i}'
      for i in range(2)]
  assert _run(['bash', SBATCH], env).returncode == 2  # no training flags: refuse


def _kernel_spec_dir(folder):
  """A kernelspec that runs this interpreter (a fresh .venv has no registered kernel)."""
  import json  # pylint: disable=g-import-not-at-top
  spec = os.path.join(folder, 'kernels', 'diffdis-test')
  os.makedirs(spec)
  with open(os.path.join(spec, 'kernel.json'), 'w') as f:
    json.dump({'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
               'display_name': 'diffdis test', 'language': 'python'}, f)
  return os.path.join(folder, 'kernels')


def test_colab_notebook_runs_end_to_end_and_shows_its_grid(tmp_path):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  from jupyter_client.kernelspec import KernelSpecManager  # pylint: disable=g-import-not-at-top
  from jupyter_client.manager import AsyncKernelManager  # pylint: disable=g-import-not-at-top

  nb = nbformat.read(NOTEBOOK, as_version=4)
  index = next(i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', []))
  # what papermill does: a cell after the parameters overrides them. A tiny model and 12
  # steps keep the run to about a minute on CPU; no install (this environment has it all)
  tiny = ['--config.model.width=32', '--config.model.depth=2', '--config.model.num_heads=2',
          '--config.model.decoder_width=32', '--config.model.decoder_heads=2',
          '--config.model.decoder_depth=1', '--config.data.image_size=8',
          '--config.model.input_size=8', '--config.model.head.hidden=32',
          '--config.model.head.bottleneck=16', '--config.model.head.out_dim=32',
          '--config.sample.steps=2', '--config.sample.per_class=2',
          '--config.eval.metric_samples=0', '--config.log_every=4']
  workdir = str(tmp_path / 'demo')
  nb.cells.insert(index + 1, nbformat.v4.new_code_cell(
      f'REPO_DIR = {ROOT!r}\nINSTALL = False\nSTEPS = 12\nWORKDIR = {workdir!r}\n'
      f'EXTRA_FLAGS = {tiny!r}'))
  ksm = KernelSpecManager(kernel_dirs=[_kernel_spec_dir(str(tmp_path))],
                          ensure_native_kernel=False)
  km = AsyncKernelManager(kernel_name='diffdis-test', kernel_spec_manager=ksm)
  client = nbclient.NotebookClient(nb, km=km, timeout=240, kernel_name='diffdis-test',
                                   resources={'metadata': {'path': str(tmp_path)}})
  # the kernel (and the training it starts) on one CPU device, as on a Colab CPU runtime
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['JAX_PLATFORMS'] = 'cpu'
  client.execute(env=env)

  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
  assert not [o for o in outputs if o.output_type == 'error']
  images = [o for o in outputs if o.output_type == 'display_data' and 'image/png' in o.data]
  assert len(images) == 1  # the grid, shown inline
  assert os.listdir(os.path.join(workdir, 'samples')) == ['step_00000012.png']
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert 'loss by step: [(4,' in text and 'devices: [CpuDevice(id=0)]' in text
