#!/bin/bash
# Submit a whole staged experiment as a chain of SLURM jobs:
#   the stages of `ich3d train --stage all` (built in: slice -> sequence -> finetune), then evaluate,
#   each starting only if the previous one succeeded. The chain is read from `ich3d train --list-stages`.
#
#   slurm/submit.sh configs/patel2019.yaml [RUN_ID] [key=value ...]
#
# Stages find the previous stage's best.ckpt in the shared run directory by themselves.
# Extra sbatch options for every job: SBATCH_EXTRA="--partition=gpu --account=me" slurm/submit.sh ...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
config=${1:?usage: slurm/submit.sh CONFIG [RUN_ID] [key=value ...]}
shift
run_id=${1:-}
if [ -n "${run_id}" ] && [[ "${run_id}" != *=* ]]; then shift; else run_id=$(date -u +%Y%m%d-%H%M%S)-$$; fi
ICH3D=${ICH3D:-ich3d}
export CONFIG="${config}" RUN_ID="${run_id}" ICH3D
# shellcheck disable=SC2086
submit() { sbatch --parsable ${SBATCH_EXTRA:-} "$@"; }

run_dir=$("${ICH3D}" train "${config}" --run-id "${run_id}" --print-run-dir "$@")
mapfile -t chain < <("${ICH3D}" train --list-stages | awk -F'\t' 'NR > 1 && $6 == "yes" {print $1}')
jid=""
for stage in "${chain[@]}"; do
    dep=()
    if [ -n "${jid}" ]; then dep=(--dependency="afterok:${jid}"); fi
    jid=$(STAGE=${stage} submit --job-name="ich3d-${stage}" "${dep[@]}" "${here}/stage.sbatch" "$@")
    printf '%-9s job %s\n' "${stage}" "${jid}"
done
jid=$(RUN_DIR="${run_dir}" submit --dependency="afterok:${jid}" "${here}/evaluate.sbatch")
echo "evaluate  job ${jid}"
echo "run directory: ${run_dir}"
