#!/usr/bin/env bash
# The accelerator measurements of docs/results.md as one prepared call, for a lent GPU machine whose
# device time is short (docs/results.md says what each figure is for).
#
# Here, once per checkout:  bash bench/device_wheels.sh   (the packages the GPU image lacks)
# There (the `run` tool, carry=["workdirs/wheels"]):
#   bash bench/device_suite.sh dit sddit          # the two goals (guessed ~5 min, not yet run)
#   bash bench/device_suite.sh masks remat diffdis  # the rest, in a second call
# Here, to check the script itself on the CPU at toy sizes:
#   SUITE_SMOKE=1 PY=.venv/bin/python OUT=/tmp/suite bash bench/device_suite.sh dit
# SUITE_DRY=1 prints each bench/train_step.py command line instead of running it (the tests
# parse them, so a renamed flag fails here rather than on the device).
#
# Groups: dit (DiT-XL/2 bf16 + cuDNN attention, the torch peer, EDM sampling), sddit
# (SD-DiT-XL/2 at the default mask ratio), masks (SD-DiT-XL/2 at mask 0.3 and 0.5), remat
# (DiT-XL/2 at batch 128 with remat none/dots/full: peak memory), diffdis (SD 1.5 DiffDis
# and its torch peer at 64x64 latents). Each measurement is one JSON line appended to
# $OUT/results.jsonl; stderr goes to $OUT/<name>.log; a summary is printed last.
set -u
GROUPS_KNOWN=" dit sddit masks remat diffdis "
[ $# -gt 0 ] || { echo "name the groups to run: dit sddit masks remat diffdis" >&2; exit 2; }
for group in "$@"; do  # every name is checked before any device time is spent
  case $GROUPS_KNOWN in *" $group "*) ;; *)
    echo "unknown group '$group': use dit, sddit, masks, remat or diffdis" >&2; exit 2 ;;
  esac
done
OUT=${OUT:?set OUT to a folder for the results}
if [ "${SUITE_DRY:-0}" != 1 ]; then
  [ ! -s "$OUT/results.jsonl" ] || {
    echo "$OUT/results.jsonl already holds results: set OUT to an empty folder" >&2; exit 2; }
  mkdir -p "$OUT" && : > "$OUT/results.jsonl"
fi
cd "$(dirname "$0")/.."

if [ "${SUITE_SMOKE:-0}${SUITE_DRY:-0}" = 00 ] && [ -d workdirs/wheels ] && ls workdirs/wheels/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site workdirs/wheels/*.whl || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
PY=${PY:-python3}

if [ "${SUITE_SMOKE:-0}" = 1 ]; then   # toy sizes on whatever backend is here
  XL=DiT-S/2; BATCH=2; BIG=4; DTYPE=float32; ATTN=; STEPS="--steps=1 --warmup=1"
  SD="--size=tiny --batch=2"; LIMIT=600
else
  XL=DiT-XL/2; BATCH=64; BIG=128; DTYPE=bfloat16; ATTN=--attention=cudnn
  STEPS="--steps=10 --warmup=3"; SD="--size=sd15 --batch=8 --latent=64"; LIMIT=300
fi

[ "${SUITE_DRY:-0}" = 1 ] || { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>/dev/null
  $PY -c 'import jax, flax, optax, orbax.checkpoint as ocp; print("jax", jax.__version__,
"flax", flax.__version__, "optax", optax.__version__, jax.devices())'
} 2>&1 | tee "$OUT/environment.txt"

measure() {  # measure NAME SECONDS ARGS...: one bench/train_step.py run, bounded in time
  local name=$1 seconds=$2; shift 2
  if [ "${SUITE_DRY:-0}" = 1 ]; then echo "bench/train_step.py $*"; return; fi
  echo "== $name: $*" >&2
  local start=$SECONDS
  timeout -k 10 "$seconds" $PY bench/train_step.py "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  local rc=$?
  if [ $rc -eq 0 ]; then
    cat "$OUT/$name.json" >> "$OUT/results.jsonl"
  else
    echo "{\"name\": \"$name\", \"failed_rc\": $rc}" >> "$OUT/results.jsonl"
    tail -n 5 "$OUT/$name.log" >&2
  fi
  echo "   rc=$rc in $((SECONDS - start)) s" >&2
}

common=(--dtype=$DTYPE $ATTN $STEPS)
for group in "$@"; do
  case $group in
    dit) measure dit_xl $LIMIT --model=$XL --method=dit --batch=$BATCH "${common[@]}" \
           --vs-torch --sample ;;
    sddit) measure sddit_xl $LIMIT --model=$XL --method=sddit --batch=$BATCH "${common[@]}" ;;
    masks) for mask in 0.3 0.5; do
             measure sddit_xl_mask$mask $LIMIT --model=$XL --method=sddit --batch=$BATCH \
               --mask-ratio=$mask "${common[@]}"
           done ;;
    remat) for policy in none dots full; do
             measure dit_xl_remat_$policy $LIMIT --model=$XL --method=dit --batch=$BIG \
               --remat=$policy "${common[@]}"
           done ;;
    # jax picks the UNet's attention: SD 1.5's head widths (40, 80, 160) are not all cuDNN's
    diffdis) measure diffdis_sd15 $LIMIT --method=diffdis $SD --dtype=$DTYPE $STEPS --vs-torch ;;
  esac
done

# the summary the call's output tail carries back
[ "${SUITE_DRY:-0}" = 1 ] || $PY - "$OUT/results.jsonl" <<'EOF'
import json, sys
keys = ('method', 'model', 'size', 'batch', 'mask_ratio', 'remat', 'step_s', 'images_per_s',
        'mfu', 'compile_s', 'peak_bytes_estimate', 'ratio_vs_torch', 'sample_images_per_s',
        'ratio_vs_gen_only', 'zeroshot_images_per_s', 'failed_rc', 'name')
for line in open(sys.argv[1]):
  row = json.loads(line)
  print(' '.join(f'{k}={row[k]}' for k in keys if row.get(k) is not None))
EOF
