#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create the slice (or reuse it), install this repository on
# every worker, run launch/main.py on all workers at once.
#
#   launch/tpu_pod.sh --name=sddit --zone=us-east5-a --accelerator=v5p-64 [options] -- \
#       --config=configs/sddit_xl.py --workdir=/gcs/my-bucket/sddit_xl \
#       --config.data.dir=/gcs/my-bucket/imagenet256_latents [--config.FIELD=VALUE ...]
#
# Everything after `--` goes to launch/main.py unchanged (it must include --config and
# --workdir). Every worker runs the same command; jax finds the other workers itself.
# The workdir and data must be paths all workers see (e.g. a bucket mounted with gcsfuse),
# since each host writes its part of every checkpoint there.
#
# Options:
#   --name=NAME            TPU VM name (required)
#   --zone=ZONE            zone (required)
#   --accelerator=TYPE     e.g. v4-32, v5p-64, v5litepod-16, v6e-16 (required to create)
#   --project=PROJECT      gcloud project (default: gcloud's configured one)
#   --version=RUNTIME      TPU software version (default: chosen from the accelerator)
#   --spot                 create a Spot slice
#   --repo=URL [--ref=REF] clone this git URL on the workers instead of copying the local
#                          checkout (the default copies `git archive HEAD`: commit first)
#   --python=VERSION       Python made by uv on the workers (default 3.12; jax needs >= 3.11)
#   --detach               start training under nohup (log: ~/diffdis_train.log on each
#                          worker) and return; without it the output of all workers streams
#   --skip-install         reuse what an earlier call installed
#   --dry-run              print the gcloud commands instead of running them
set -euo pipefail

NAME='' ZONE='' ACCEL='' PROJECT='' VERSION='' SPOT=0 REPO='' REF='' PY=3.12
DETACH=0 INSTALL=1 DRY=0
usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator=*) ACCEL="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --repo=*) REPO="${1#*=}" ;;
    --ref=*) REF="${1#*=}" ;;
    --python=*) PY="${1#*=}" ;;
    --detach) DETACH=1 ;;
    --skip-install) INSTALL=0 ;;
    --dry-run) DRY=1 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (training flags go after --; see --help)" ;;
  esac
  shift
done
TRAIN_ARGS=("$@")

[[ -n "$NAME" ]] || die '--name is required'
[[ -n "$ZONE" ]] || die '--zone is required'
# (a loop, not `printf | grep -q`: grep's early exit would SIGPIPE printf under pipefail)
has_flag() { local a; for a in "${TRAIN_ARGS[@]}"; do [[ "$a" == "$1"=* ]] && return 0; done; return 1; }
has_flag --config || die 'pass --config=... after --'
has_flag --workdir || die 'pass --workdir=... after --'

if [[ -z "$VERSION" ]]; then  # the TPU VM base images of each generation
  case "$ACCEL" in
    v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    '') VERSION='' ;;
    *) die "no default --version for accelerator $ACCEL; pass --version=RUNTIME" ;;
  esac
fi

GCLOUD=(gcloud compute tpus tpu-vm)
LOC=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && LOC+=(--project="$PROJECT")
REMOTE_DIR='$HOME/diffdis_jax'   # expanded by the workers' shells
VENV='$HOME/diffdis_venv'

# one shell word: as it is when plain, else in single quotes
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

# run or (--dry-run) print a command, quoted so that the printed line can be pasted
run() {
  if [[ $DRY == 1 ]]; then
    local sep=''
    for word in "$@"; do printf '%s' "$sep"; quote "$word"; sep=' '; done; echo
  else
    "$@"
  fi
}
ssh_all() { run "${GCLOUD[@]}" ssh "$NAME" "${LOC[@]}" --worker=all --command="$1"; }

# 1. the slice: reuse it when it exists, create it otherwise
create=("${GCLOUD[@]}" create "$NAME" "${LOC[@]}" --accelerator-type="$ACCEL"
        --version="$VERSION")
[[ $SPOT == 1 ]] && create+=(--spot)
if [[ $DRY == 1 ]]; then
  echo "# reuse the slice if this succeeds, otherwise create it:"
  run "${GCLOUD[@]}" describe "$NAME" "${LOC[@]}"
  run "${create[@]}"
elif "${GCLOUD[@]}" describe "$NAME" "${LOC[@]}" > /dev/null 2>&1; then
  echo "tpu_pod.sh: reusing TPU VM $NAME" >&2
else
  [[ -n "$ACCEL" ]] || die "TPU VM $NAME does not exist; pass --accelerator=TYPE to create it"
  run "${create[@]}"
fi

# 2. the code and its environment on every worker
if [[ $INSTALL == 1 ]]; then
  if [[ -n "$REPO" ]]; then
    fetch="rm -rf $REMOTE_DIR && git clone --depth=1 ${REF:+--branch=$REF} $REPO $REMOTE_DIR"
  else
    # the local checkout at HEAD: every worker gets the same, committed code
    root="$(cd "$(dirname "$0")/.." && pwd)"
    archive="/tmp/diffdis_jax_$NAME.tar.gz"
    run git -C "$root" archive --format=tar.gz --prefix=diffdis_jax/ -o "$archive" HEAD
    run "${GCLOUD[@]}" scp "$archive" "$NAME:diffdis_jax.tar.gz" "${LOC[@]}" --worker=all
    fetch="rm -rf $REMOTE_DIR && tar -xzf ~/diffdis_jax.tar.gz -C ~"
  fi
  # uv brings its own Python: the TPU images ship 3.10, jax 0.10 needs 3.11 or newer
  ssh_all "set -e; $fetch; \
(command -v uv || curl -LsSf https://astral.sh/uv/install.sh | sh) > /dev/null; \
export PATH=\$HOME/.local/bin:\$PATH; uv venv --allow-existing --python $PY $VENV; \
uv pip install --python $VENV/bin/python -e \"$REMOTE_DIR[tf]\" 'jax[tpu]>=0.10.2,<0.12'"
fi

# 3. training: the same command on every worker
quoted=''
for word in "${TRAIN_ARGS[@]}"; do quoted+="$(quote "$word") "; done
cmd="cd $REMOTE_DIR && $VENV/bin/python launch/main.py ${quoted% }"
if [[ $DETACH == 1 ]]; then
  cmd="cd $REMOTE_DIR && nohup $VENV/bin/python launch/main.py ${quoted% } \
> ~/diffdis_train.log 2>&1 < /dev/null &"
fi
ssh_all "$cmd"
