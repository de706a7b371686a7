"""flow against EDM, paired by seed: each variant's runs in two studies that differ only in
`objective` (this folder's results.json, --set=objective=flow; and the EDM study's).

Usage, from the repository root:
    python docs/study/sddit_fmnist_flow_cpu/compare_objectives.py \
      docs/study/sddit_fmnist_flow_cpu/results.json docs/study/sddit_fmnist_cpu/results.json
"""
import json
import statistics
import sys

LOWER_IS_BETTER = {'fd_fmnist'}


def main(flow_path: str, edm_path: str):
  flow, edm = (json.load(open(p)) for p in (flow_path, edm_path))
  print('| variant | mark | metric | flow | EDM | flow − EDM | seeds where flow is better |')
  print('|---|---|---|---|---|---|---|')
  for name, variant in flow['variants'].items():
    if name not in edm['variants']:
      continue
    mine, theirs = variant['per_seed'], edm['variants'][name]['per_seed']
    seeds = sorted(set(mine) & set(theirs), key=int)
    for mark in sorted(mine[seeds[0]], key=int):
      for metric in sorted(mine[seeds[0]][mark]):
        a = [mine[s][mark][metric] for s in seeds]
        b = [theirs[s][mark][metric] for s in seeds]
        diff = [x - y for x, y in zip(a, b)]
        better = sum((d < 0) if metric in LOWER_IS_BETTER else (d > 0) for d in diff)
        spread = f' ± {statistics.stdev(diff):.3g}' if len(diff) > 1 else ''
        print(f'| `{name}` | {mark} | {metric} | {statistics.mean(a):.4g} | '
              f'{statistics.mean(b):.4g} | {statistics.mean(diff):+.3g}{spread} | '
              f'{better}/{len(diff)} |')


if __name__ == '__main__':
  main(*sys.argv[1:3])
