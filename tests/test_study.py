"""launch/study.py end to end at a toy budget (tiny models, a handful of steps, one seed):
both studies write well-formed results.json and table.md, a rerun skips finished runs, and
bad input answers with one line and exit status 2, writing nothing."""
import json
import math
import os
import subprocess
import sys

import pytest

from configs.study import STUDIES
from conftest import COMPILE_CACHE_ENV
from forked_main import run_forked
from diffdis_jax.study import curves, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# conftest.tiny_sddit_config's sizes, as --set flags
SDDIT_TINY = [f'--set={kv}' for kv in (
    'data.image_size=8', 'model.input_size=8', 'model.width=32', 'model.depth=2',
    'model.num_heads=2', 'model.decoder_depth=1', 'model.decoder_width=32',
    'model.decoder_heads=2', 'model.head.hidden=32', 'model.head.bottleneck=16',
    'model.head.out_dim=32', 'batch_size=8', 'sample.steps=3', 'sample.per_class=1')]
# a one-level UNet and the smallest text encoder: the two-pass step compiles in about a
# minute on a busy 2-core CPU (two levels: about twice that)
DIFFDIS_TINY = [f'--set={kv}' for kv in (
    'model.block_out_channels=(16,)', "model.down_block_types=('CrossAttnDownBlock2D',)",
    "model.up_block_types=('CrossAttnUpBlock2D',)", 'model.attention_head_dim=2',
    'text_encoder.hidden_size=16', 'text_encoder.intermediate_size=32',
    'text_encoder.projection_dim=16', 'text_encoder.num_hidden_layers=1',
    'text_encoder.num_attention_heads=2', 'text_encoder.pretrain_steps=20',
    'text_encoder.pretrain_batch=32', 'diffdis.context_dim=16', 'diffdis.text_dim=16',
    'diffdis.zeroshot.steps=2', 'diffdis.sample.steps=2', 'diffdis.sample.per_prompt=1',
    'batch_size=8')]
TOY = ['--seeds=1', '--samples=20', '--fast_compile']
SDDIT_RUN = ['--study=sddit', '--only=dit,sddit', '--steps=4', '--eval_at=2', *TOY, *SDDIT_TINY]
DIFFDIS_RUN = ['--study=diffdis', '--only=diffdis,gen_only', '--steps=3', *TOY, *DIFFDIS_TINY]


def _env():
  return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')  # one CPU device: fastest compiles


def _cache_flag():
  # the test session's compilation cache (conftest.py) instead of one per --out: the studies
  # below train the same tiny variants under several --out folders
  return [f'--compile_cache={os.environ[COMPILE_CACHE_ENV]}']


def _run(args, timeout=1200):
  return subprocess.run([sys.executable, 'launch/study.py', *_cache_flag(), *args], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=timeout)


def _error_line(stderr: str) -> str:
  lines = [l for l in stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1, stderr[-2000:]
  return lines[0]


@pytest.fixture(scope='module')
def out(tmp_path_factory):
  """One --out for both studies, as a user would: they share the digits classifier."""
  return tmp_path_factory.mktemp('study') / 'out'


def _check_results(study_dir, variants, steps, ranges):
  """results.json holds each variant with finite per-seed scores in `ranges` at every step;
  table.md has a row per variant and a column per (metric, step)."""
  with open(study_dir / 'results.json') as f:
    results = json.load(f)
  assert list(results['variants']) == variants
  assert results['settings']['eval_at'] == steps
  for name in variants:
    v = results['variants'][name]
    assert v['seeds'] == [0] and v['num_params'] > 0 and v['wall_seconds']['0'] > 0
    assert v['hardware']['backend'] == 'cpu'
    for step in map(str, steps):
      for metric, (low, high) in ranges.get(name, ranges['*']).items():
        value = v['per_seed']['0'][step][metric]
        assert math.isfinite(value) and low <= value <= high, (name, step, metric, value)
        stats = v['summary'][step][metric]
        assert stats['mean'] == value and stats['n'] == 1 and stats['std'] is None
  with open(study_dir / 'table.md') as f:
    table = f.read()
  for name in variants:
    assert sum(line.startswith(f'| `{name}` |') for line in table.splitlines()) == 1, table
  for step in steps:
    for metric in results['metrics']:
      assert f'{metric}' in table and f'@{step}' in table
  return results, table


def _snapshot(study_dir):
  """Bytes of every run's record and metrics log."""
  out = {}
  for root, _, files in os.walk(study_dir):
    for name in files:
      if name in ('study_run.json', 'metrics.jsonl'):
        with open(os.path.join(root, name), 'rb') as f:
          out[os.path.join(root, name)] = f.read()
  return out


def test_sddit_study_end_to_end_and_rerun_skips(out):
  proc = _run([f'--out={out}', *SDDIT_RUN])
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = {'fd_digits': (0.0, 1e4), 'sample_class_acc': (0.0, 1.0)}
  _check_results(out / 'sddit', ['dit', 'sddit'], [2, 4], {'*': metrics})
  # both stages of each run were scored and recorded, with the run's compute
  assert proc.stdout.count(': step 2:') == 2 and proc.stdout.count(': step 4:') == 2
  results = json.loads((out / 'sddit' / 'results.json').read_text())
  dit, sddit = results['variants']['dit'], results['variants']['sddit']
  for v in (dit, sddit):
    assert v['steps'] == 4 and v['eval_steps'] == {'2': 2, '4': 4}
    assert v['eval_flops']['4'] == pytest.approx(4 * 8 * v['train_flops_per_image'])
  assert sddit['train_flops_per_image'] > dit['train_flops_per_image'] > 0
  # the convergence plot: a PNG with one curve per variant in each panel
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(out / 'sddit' / 'curves.png') as image:
    assert image.format == 'PNG' and min(image.size) > 300
  drawn = curves.write_curves(results, str(out / 'curves_again.png'))
  assert len(drawn) == 4 and all(names == ['dit', 'sddit'] for names in drawn.values())
  assert any('lower is better' in title for title in drawn)

  before = _snapshot(out / 'sddit')
  again = _run([f'--out={out}', *SDDIT_RUN])
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count('finished before, skipped') == 2, again.stdout
  assert ': step ' not in again.stdout  # nothing trained or scored again
  assert _snapshot(out / 'sddit') == before

  other = _run([f'--out={out}', *SDDIT_RUN, '--steps=5'])
  assert other.returncode == 2
  assert 'other settings' in _error_line(other.stderr) and 'steps=4' in _error_line(other.stderr)
  assert _snapshot(out / 'sddit') == before


def test_equal_compute_trains_cheaper_variants_longer(out):
  """--budget=flops: DiT (cheaper per step than SD-DiT) trains for the steps that spend
  SD-DiT's FLOPs, and is scored at the compute marks of SD-DiT's steps 2 and 4."""
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.study import plan
  settings, variants = plan.check_flags(STUDIES['sddit'], 'cpu', 'dit,sddit', 1, 4, '2', 20,
                                        [a[len('--set='):] for a in SDDIT_TINY], True,
                                        budget='flops')
  dit_run, sddit_run = plan.plan(STUDIES['sddit'], settings, variants, 1, str(out))
  ratio = sddit_run.flops_per_image / dit_run.flops_per_image
  assert ratio > 1.2
  assert sddit_run.eval_at == (2, 4) and sddit_run.config.total_steps == 4
  assert dit_run.eval_at == (round(2 * ratio), round(4 * ratio))
  assert dit_run.config.total_steps == dit_run.eval_at[-1] and dit_run.marks == (2, 4)
  flops_out = out.parent / 'flops_out'
  proc = _run([f'--out={flops_out}', '--budget=flops', '--study=sddit', '--only=dit',
               *SDDIT_RUN[2:]])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'dit: {list(dit_run.eval_at)}' in proc.stdout
  results = json.loads((flops_out / 'sddit' / 'results.json').read_text())
  v = results['variants']['dit']
  assert results['budget'] == 'flops' and v['steps'] == dit_run.eval_at[-1]
  assert v['eval_steps'] == {'2': dit_run.eval_at[0], '4': dit_run.eval_at[1]}
  # each mark's compute is within a step of SD-DiT's at that step
  for mark in ('2', '4'):
    reference = int(mark) * 8 * sddit_run.flops_per_image
    assert abs(v['eval_flops'][mark] - reference) <= 8 * dit_run.flops_per_image
  assert 'Equal compute' in (flops_out / 'sddit' / 'table.md').read_text()


def test_equal_compute_steps_arithmetic():
  # plan.py imports the tasks, so only here
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.study.plan import TrainingCost, _equal_compute_steps
  flat = TrainingCost(1.5)
  assert flat.steps_for(1000 * 3.0, 1) == 2000     # half the cost: twice the steps
  assert TrainingCost(1.0).steps_for(1900.0, 1) == 1900
  assert TrainingCost(3.0).steps_for(1000.0, 1) == 333   # to the nearest step
  assert TrainingCost(10.0).steps_for(1.0, 1) == 1       # never below one step
  # a final phase from step 90 at twice the cost: 90 x 1 + 10 x 2 per image
  phased = TrainingCost(1.0, final_start=90, final_per_image=2.0)
  assert phased.flops(100, 4) == 4 * 110.0 and phased.flops(50, 4) == 4 * 50.0
  assert phased.mean_per_image(100) == pytest.approx(1.1)
  assert phased.steps_for(4 * 110.0, 4) == 100 and phased.steps_for(4 * 50.0, 4) == 50
  # equal compute against a reference at 1.1 per image: the run's length decides where its
  # last 10% starts, and each mark is the step that has spent the reference's FLOPs there
  cost_at = lambda total: TrainingCost(1.0, total - round(0.1 * total), 2.0)
  spend = lambda k: k * 1.1
  steps = _equal_compute_steps((50, 100), spend, cost_at, 1)
  total = steps[-1]
  assert abs(cost_at(total).flops(total, 1) - spend(100)) <= 2.0, steps
  assert steps[0] == 55  # before the final phase: 1.1 x 50 at cost 1


def test_a_final_phase_is_priced_at_its_own_config():
  """MaskDiT's unmasked fine-tune sees all tokens: its steps cost more than its masked ones,
  and more than DiT's (the same stack without the separate decoder)."""
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.study.plan import training_cost
  study = STUDIES['sddit_fmnist']
  build = lambda name: study.build_config('cpu_ratio', name, 0, 3000, {}, 500)
  finetune, masked, dit = (training_cost(build(n)) for n in ('maskdit_finetune', 'maskdit',
                                                               'dit'))
  assert masked.final_start is None and dit.final_start is None
  assert finetune.final_start == 2700 and finetune.per_image == masked.per_image
  assert finetune.final_per_image > dit.per_image > masked.per_image
  assert masked.per_image < finetune.mean_per_image(3000) < finetune.final_per_image


def test_diffdis_study_end_to_end(out):
  proc = _run([f'--out={out}', *DIFFDIS_RUN])
  assert proc.returncode == 0, proc.stderr[-3000:]
  generation = {'fd_digits': (0.0, 1e4), 'sample_class_acc': (0.0, 1.0)}
  results, table = _check_results(
      out / 'diffdis', ['diffdis', 'gen_only'], [3],
      {'*': {**generation, 'zeroshot_top1': (0.0, 1.0)}, 'gen_only': generation})
  # generation only has no text head: zero-shot is not measured, and says so
  stats = results['variants']['gen_only']['summary']['3']['zeroshot_top1']
  assert stats['mean'] is None and stats['absent'] == 1
  assert 'n/a' in next(l for l in table.splitlines() if l.startswith('| `gen_only` |'))


def test_stopped_run_resumes_from_its_checkpoint(out, tmp_path):
  """SIGTERM (here: its flag) stops a run at the next step with a checkpoint; running it
  again continues from there to the budget and scores it. In process, one tiny variant."""
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.study import plan, run as run_lib
  from diffdis_jax.train import preemption
  from diffdis_jax.train.metrics_log import read_metrics
  settings, variants = plan.check_flags(STUDIES['sddit'], 'cpu', 'dit', 1, 4, '4', 20,
                                        [a[len('--set='):] for a in SDDIT_TINY], True)
  (run,) = plan.plan(STUDIES['sddit'], settings, variants, 1, str(tmp_path))
  caches = str(out / 'caches')  # the digits classifier of the end-to-end test, if it ran
  lines = []
  with preemption.sigterm_requests_stop():
    preemption.request_stop()
    assert run_lib.run_one(run, settings, caches, lines.append) == 'stopped'
  assert plan.read_record(run.workdir)['evals'] == {}
  assert run_lib.run_one(run, settings, caches, lines.append) == 'done'
  record = plan.read_record(run.workdir)
  assert record['complete'] and set(record['evals']) == {'4'}
  assert 0 <= record['evals']['4']['sample_class_acc'] <= 1
  saved_at = [r['step'] for r in read_metrics(run.workdir) if 'params_fingerprint' in r]
  assert saved_at == [1, 4]  # a fresh start would have dropped step 1's entry
  assert run_lib.run_one(run, settings, caches, lines.append) == 'skipped'


def test_a_run_another_driver_holds_is_left_to_it(tmp_path):
  """A second driver that reaches a run the first is training skips it and writes nothing
  there; once the holder dies (here: SIGKILL), the run is free again."""
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.core import files
  from diffdis_jax.study import plan, run as run_lib
  settings, variants = plan.check_flags(STUDIES['sddit'], 'cpu', 'dit', 1, 4, '4', 20,
                                        [a[len('--set='):] for a in SDDIT_TINY], True)
  (run,) = plan.plan(STUDIES['sddit'], settings, variants, 1, str(tmp_path))
  os.makedirs(run.workdir)
  holder = subprocess.Popen([sys.executable, '-c', (
      'import fcntl, os, sys, time\n'
      f'fd = os.open({run.workdir!r}, os.O_RDONLY | os.O_DIRECTORY)\n'
      'fcntl.flock(fd, fcntl.LOCK_EX)\nprint("held", flush=True)\ntime.sleep(600)')],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    lines = []
    assert run_lib.run_one(run, settings, str(tmp_path / 'caches'), lines.append) == 'skipped'
    assert 'another study driver is running it' in lines[0], lines
    assert os.listdir(run.workdir) == []
  finally:
    holder.kill()
    holder.wait()
  with files.exclusive_folder(run.workdir) as ours:
    assert ours


@pytest.mark.parametrize('study', ['sddit', 'diffdis'])
def test_every_variant_traces_its_train_step(study, tmp_path):
  """A variant that passes the checks but cannot trace would stop a study hours in (as
  SD-DiT with a mask-token decoder did: its teacher lacked the mask token)."""
  # pylint: disable=g-import-not-at-top
  import jax
  from diffdis_jax.parallel import mesh as mesh_lib
  from diffdis_jax.study import plan
  from diffdis_jax.train import checkpoint as ckpt_lib
  from diffdis_jax.modes.run import build_trainer
  from diffdis_jax.train import step as step_lib
  tiny = SDDIT_TINY if study == 'sddit' else DIFFDIS_TINY
  settings, variants = plan.check_flags(STUDIES[study], 'cpu', '', 1, 4, '', 20,
                                        [a[len('--set='):] for a in tiny], True)
  for run in plan.plan(STUDIES[study], settings, variants, 1, str(tmp_path)):
    trainer = build_trainer(run.config, run.workdir)
    step_fn = step_lib.make_train_step(trainer.model, trainer.tx, trainer.objective,
                                       trainer.config)
    state = ckpt_lib.abstract_with_shardings(trainer.abstract_state, trainer.state_shardings)
    with mesh_lib.activation_rules(trainer.mesh, trainer.config.axis_rules):
      new_state, metrics = jax.eval_shape(step_fn, state, trainer.abstract_batch())
    assert 'loss' in metrics, run.name
    assert jax.tree.structure(new_state) == jax.tree.structure(state), run.name


def test_gpu_scale_configs_pass_every_check(tmp_path):
  """No GPU here: the larger configs are at least checked as a real run would check them."""
  for study, count in (('sddit', 14), ('diffdis', 4)):
    proc = _run([f'--study={study}', f'--out={tmp_path / "gpu"}', '--scale=gpu', '--dry_run'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('/seed2 -> ') == count, proc.stdout
  assert not (tmp_path / 'gpu').exists()


OUT = '--out={out}'
BAD_INPUTS = [
    (['--study=nope', OUT], 'study'),
    (['--study=sddit'], '--out are required'),
    (['--study=sddit', OUT, '--only=dit,nope'], 'unknown sddit variant(s) nope'),
    (['--study=diffdis', OUT, '--only=dit'], 'unknown diffdis variant(s) dit'),
    (['--study=sddit', OUT, '--seeds=0'], '--seeds must be a positive integer'),
    (['--study=sddit', OUT, '--steps=4', '--eval_at=2,5'], 'must be in 1..4'),
    (['--study=sddit', OUT, '--eval_at=half'], 'comma-separated list'),
    (['--study=sddit', OUT, '--set=model.nope=1'], "no field 'model.nope'"),
    (['--study=sddit', OUT, '--set=width'], 'is not FIELD=VALUE'),
    (['--study=sddit', OUT, '--set=sddit.teacher_sigma=nope'],
     'dit_equal_size/seed0: sddit.teacher_sigma'),
    (['--study=sddit', OUT, 'extra'], 'unexpected arguments'),
    (['--study=sddit', OUT, '--budget=time'], 'budget'),
    (['--study=diffdis', OUT, '--budget=flops'], 'needs a reference variant'),
    (['--study=sddit', OUT, '--scale=finetune'], 'study sddit has the scales cpu, gpu'),
    # the fine-tune scale's generator is trained before the study
    (['--study=diffdis_fmnist', OUT, '--scale=finetune', '--dry_run',
      '--set=init.pretrained_generator={out}_generator'], 'holds no checkpoint'),
]


def test_bad_input_one_line_nothing_written(tmp_path):
  """Every case in a process forked after the imports (tests/forked_main.py), each with its
  own --out: exit status 2, one `error:` line with the words, nothing written."""
  targets = [tmp_path / f'new{i}' for i in range(len(BAD_INPUTS))]
  argvs = [[*_cache_flag(), *(a.format(out=target) for a in args)]
           for (args, _), target in zip(BAD_INPUTS, targets)]
  results = run_forked(argvs, tmp_path, _env(), script='launch/study.py')
  for (args, words), target, r in zip(BAD_INPUTS, targets, results):
    assert r['returncode'] == 2, (args, r['stderr'][-2000:])
    assert words in _error_line(r['stderr']), args
    assert not target.exists(), args


def test_out_must_be_a_study_folder(tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  proc = _run(['--study=sddit', f'--out={a_file}'])
  assert proc.returncode == 2 and 'is a file' in _error_line(proc.stderr)
  foreign = tmp_path / 'foreign'
  foreign.mkdir()
  (foreign / 'notes.txt').write_text('mine')
  proc = _run(['--study=sddit', f'--out={foreign}'])
  assert proc.returncode == 2 and 'did not write' in _error_line(proc.stderr)
  assert sorted(os.listdir(foreign)) == ['notes.txt']


def test_summary_is_mean_and_sample_std_over_seeds():
  stats = report.summarise([1.0, 2.0, 3.0])
  assert stats['mean'] == 2.0 and stats['std'] == 1.0 and stats['n'] == 3
  stats = report.summarise([4.0, None, report.ABSENT])
  assert stats['mean'] == 4.0 and stats['std'] is None
  assert (stats['n'], stats['not_finite'], stats['absent']) == (1, 1, 1)


def test_paired_differences_pair_each_seed_with_the_reference_seed():
  """Seed k of a variant is compared with seed k of the reference, and 'better' follows each
  metric's direction."""
  def variant(per_seed):
    return {'per_seed': {str(k): {'10': scores} for k, scores in per_seed.items()},
            'summary': {'10': {}}}
  variants = {
      'ref': variant({0: {'fd': 10.0, 'acc': 0.5}, 1: {'fd': 20.0, 'acc': 0.7},
                      2: {'fd': 30.0, 'acc': 0.9}}),
      # better fd on every seed by 1, 2 and 3; acc worse on seeds 0 and 1, equal on 2;
      # seed 3 has no reference seed and must not count
      'other': variant({0: {'fd': 9.0, 'acc': 0.4}, 1: {'fd': 18.0, 'acc': 0.6},
                        2: {'fd': 27.0, 'acc': 0.9}, 3: {'fd': 0.0, 'acc': 1.0}}),
  }
  paired = report.paired_differences(variants, 'ref', (('fd', 'lower'), ('acc', 'higher')))
  assert set(paired) == {'other'}
  fd, acc = paired['other']['10']['fd'], paired['other']['10']['acc']
  assert (fd['mean'], fd['std'], fd['seeds'], fd['better']) == (-2.0, 1.0, 3, 3)
  assert acc['mean'] == pytest.approx(-0.2 / 3) and acc['better'] == 0
  assert report.paired_differences(variants, '', (('fd', 'lower'),)) == {}


def test_paired_cells_take_the_decimals_of_their_metric():
  """An fd difference below 1.5 keeps fd's one decimal; an accuracy difference keeps three."""
  results = {'metrics': {'fd': 'lower', 'acc': 'higher'},
             'variants': {'ref': {'summary': {'10': {'fd': {'mean': 60.0},
                                                     'acc': {'mean': 0.5}}}}}}
  diff = lambda mean: {'mean': mean, 'std': None, 'seeds': 1, 'better': 1}
  paired = {'other': {'10': {'fd': diff(-1.237), 'acc': diff(0.0412)}}}
  row = report._paired_table(results, ['10'], paired, 'ref')[-1]  # pylint: disable=protected-access
  assert '| -1.2 (n=1) [1/1] | +0.041 (n=1) [1/1] |' in row


def test_a_run_whose_inputs_changed_is_refused_and_the_report_names_mixed_inputs(tmp_path):
  """A rebuilt input (same path, new contents) is caught before anything trains: its
  fingerprint in study_run.json no longer matches. Runs that read different contents are
  named in the report."""
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.study import inputs, plan, run as run_lib
  latents = tmp_path / 'latents'
  latents.mkdir()
  (latents / 'shard-0').write_bytes(b'one build')
  settings, variants = plan.check_flags(
      STUDIES['sddit'], 'cpu', 'dit', 1, 4, '4', 20,
      [a[len('--set='):] for a in SDDIT_TINY] + [f'data.dir={latents}'], True)
  (run,) = plan.plan(STUDIES['sddit'], settings, variants, 1, str(tmp_path / 'out'))
  first = inputs.fingerprint_inputs(run.config)
  assert list(first) == ['data.dir']
  os.makedirs(run.workdir)
  record = {'variant': 'dit', 'seed': 0, 'inputs': first, 'evals': {}, 'complete': False}
  plan.write_json(os.path.join(run.workdir, plan.RECORD_FILE), record)

  (latents / 'shard-0').write_bytes(b'another build')  # the same path, rebuilt
  assert inputs.fingerprint_inputs(run.config) != first
  with pytest.raises(plan.StudyError, match=r'contents of data\.dir changed since the run'):
    run_lib.run_one(run, settings, str(tmp_path / 'caches'), print)
  assert plan.read_record(run.workdir) == record  # untouched
  assert not os.path.exists(os.path.join(run.workdir, 'checkpoints'))

  rebuilt = dict(record, inputs=inputs.fingerprint_inputs(run.config))
  assert inputs.mixed_inputs([record, rebuilt, {'evals': {}}]) == {
      'data.dir': sorted([first['data.dir'], rebuilt['inputs']['data.dir']])}
  assert inputs.mixed_inputs([record, record]) == {}
  lines = report._mixed_input_lines(inputs.mixed_inputs([record, rebuilt]))
  assert 'did not all read the same data.dir' in lines[0]
