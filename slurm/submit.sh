#!/bin/bash
# Submit a staged experiment as a chain of SLURM jobs: the stages of `ich3d train --stage all`
# (read from `ich3d train --list-stages`; built in: slice -> sequence -> finetune), then evaluate.
#
#   slurm/submit.sh CONFIG [RUN_ID] [key=value ...]
#
# Each job starts only when the previous one completed (afterok); a job that fails cancels the
# jobs after it (--kill-on-invalid-dep=yes) instead of leaving them pending. Submitting the same
# RUN_ID again continues the run: stages with a result.json are not submitted again, an
# interrupted stage resumes from its newest checkpoint, the others start.
#
# Cross-validation (data.folds: K > 1 in the config, or the override data.folds=K): every stage
# is one job array with one task per fold (--array=0-(K-1); the task id is the fold, which
# slurm/stage.sbatch passes as --fold), each array after the previous stage's array task by task
# (--dependency=aftercorr), evaluate after the last arrays (afterok: every fold's last stage)
# on the whole run (the out-of-fold table). A failed task cancels the later tasks of its own
# fold and the evaluate job; the other folds run on to the end. Resubmitting the same RUN_ID
# submits, per fold, only the stages without a result.json (folds that stopped at the same
# stage share one array chain). ARRAY_LIMIT=N runs at most N tasks of an array at once (%N).
#
# Resources (environment; nothing GPU-specific unless asked, so it runs on CPU-only clusters):
#   GPUS_PER_NODE    GPUs per node for the stages (default 0: none requested)
#   NODES            nodes per stage (default: trainer.num_nodes of the config)
#   TASKS_PER_NODE   processes per node (default: trainer.devices of the config; when that is
#                    'auto', GPUS_PER_NODE, or 1 without GPUs)
#   CPUS_PER_TASK, MEM, TIME   --cpus-per-task, --mem, --time of the stages (default: the cluster's)
#   EVAL_GPUS        GPUs of the evaluate job (default 1 if GPUS_PER_NODE > 0, else 0)
#   SBATCH_EXTRA       extra sbatch options for every job      (e.g. "--partition=gpu --account=me")
#   STAGE_SBATCH_ARGS  extra sbatch options for the stage jobs (e.g. "--time=24:00:00 --mem=0")
#   SBATCH_ARGS_<stage> extra options for one stage            (e.g. SBATCH_ARGS_sequence="--ntasks-per-node=1")
#   EVAL_SBATCH_ARGS   extra sbatch options for the evaluate job (e.g. "--time=2:00:00 --cpus-per-task=8")
#   ICH3D, ICH3D_SETUP the command and the compute-node setup (see slurm/stage.sbatch)
# Later options win, so the *_ARGS override the computed ones. Example, 2 nodes x 4 GPUs:
#   GPUS_PER_NODE=4 NODES=2 CPUS_PER_TASK=8 STAGE_SBATCH_ARGS="--time=24:00:00" \
#       slurm/submit.sh configs/patel2019.yaml exp1 stages.slice.batch_size=24
# The batch sizes are global (divided over the processes): a volume stage with batch 1 runs on
# one process, e.g. SBATCH_ARGS_sequence="--nodes=1 --ntasks-per-node=1 --gpus-per-node=1".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
usage="usage: slurm/submit.sh CONFIG [RUN_ID] [key=value ...]"
config=${1:?${usage}}
shift
run_id=${1:-}
if [ -n "${run_id}" ] && [[ "${run_id}" != *=* ]]; then shift; else run_id=$(date -u +%Y%m%d-%H%M%S)-$$; fi
read -r -a ich3d <<< "${ICH3D:-ich3d}"
export ICH3D="${ICH3D:-ich3d}"
[ -z "${ICH3D_SETUP:-}" ] || export ICH3D_SETUP

IFS=$'\t' read -r cfg_nodes cfg_devices cfg_folds < <("${ich3d[@]}" train "${config}" --print-scale "$@")
folds=${cfg_folds:-1}
cv=()
if [ "${folds}" -gt 1 ]; then cv=(--folds all); fi    # the cross-validation run's own directory
run_dir=$("${ich3d[@]}" train "${config}" --run-id "${run_id}" "${cv[@]}" --print-run-dir "$@")
gpus=${GPUS_PER_NODE:-0}
nodes=${NODES:-${cfg_nodes}}
if [ -n "${TASKS_PER_NODE:-}" ]; then tasks=${TASKS_PER_NODE}
elif [[ "${cfg_devices}" =~ ^[0-9]+$ ]] && [ "${cfg_devices}" -gt 0 ]; then tasks=${cfg_devices}
elif [ "${gpus}" -gt 0 ]; then tasks=${gpus}
else tasks=1
fi
stage_res=(--nodes="${nodes}" --ntasks-per-node="${tasks}")
if [ "${gpus}" -gt 0 ]; then stage_res+=(--gpus-per-node="${gpus}"); fi
if [ -n "${CPUS_PER_TASK:-}" ]; then stage_res+=(--cpus-per-task="${CPUS_PER_TASK}"); fi
if [ -n "${MEM:-}" ]; then stage_res+=(--mem="${MEM}"); fi
if [ -n "${TIME:-}" ]; then stage_res+=(--time="${TIME}"); fi
eval_gpus=${EVAL_GPUS:-$(( gpus > 0 ? 1 : 0 ))}
eval_res=()
if [ "${eval_gpus}" -gt 0 ]; then eval_res+=(--gpus="${eval_gpus}"); fi
read -r -a extra <<< "${SBATCH_EXTRA:-}"
read -r -a stage_extra <<< "${STAGE_SBATCH_ARGS:-}"
read -r -a eval_extra <<< "${EVAL_SBATCH_ARGS:-}"

submit() { sbatch --parsable --kill-on-invalid-dep=yes "$@" | cut -d';' -f1; }

mapfile -t chain < <("${ich3d[@]}" train --list-stages | awk -F'\t' 'NR > 1 && $6 == "yes" {print $1}')

submit_stage() {  # submit_stage STAGE DEPENDENCY [sbatch options ...]: print the job id
    local stage=$1 dep=$2 per_stage_var="SBATCH_ARGS_$1" per_stage
    shift 2
    read -r -a per_stage <<< "${!per_stage_var:-}"
    local deps=()
    if [ -n "${dep}" ]; then deps=(--dependency="${dep}"); fi
    submit --job-name="ich3d-${stage}" "${deps[@]}" "$@" "${stage_res[@]}" "${extra[@]}" \
        "${stage_extra[@]}" "${per_stage[@]}" "${here}/stage.sbatch" "${stage}" "${config}" "${run_id}" \
        "${overrides[@]}"
}

array_spec() {  # array_spec 0 1 2 5 -> 0-2,5 (ascending fold numbers)
    local out="" first="" last="" k
    for k in "$@" ""; do
        if [ -n "${k}" ] && [ -n "${last}" ] && [ "${k}" -eq $(( last + 1 )) ]; then last=${k}; continue; fi
        if [ -n "${first}" ]; then
            if [ "${first}" = "${last}" ]; then out+="${out:+,}${first}"; else out+="${out:+,}${first}-${last}"; fi
        fi
        first=${k} last=${k}
    done
    echo "${out}"
}

overrides=("$@")
last_jobs=()
if [ "${folds}" -le 1 ]; then
    jid=""
    for stage in "${chain[@]}"; do
        if [ -f "${run_dir}/${stage}/result.json" ]; then
            printf '%-9s done (result.json), not submitted\n' "${stage}"
            continue
        fi
        jid=$(submit_stage "${stage}" "${jid:+afterok:${jid}}")
        printf '%-9s job %s\n' "${stage}" "${jid}"
    done
    if [ -n "${jid}" ]; then last_jobs=("${jid}"); fi
else
    # per fold, the index in the chain of its first stage without a result.json
    declare -a from_stage=()
    for (( k = 0; k < folds; k++ )); do
        i=0
        while [ "${i}" -lt "${#chain[@]}" ] && [ -f "${run_dir}/fold${k}/${chain[i]}/result.json" ]; do i=$(( i + 1 )); done
        from_stage+=("${i}")
    done
    for (( i = 0; i < ${#chain[@]}; i++ )); do
        done_folds=()
        for (( k = 0; k < folds; k++ )); do
            if [ "${from_stage[k]}" -gt "${i}" ]; then done_folds+=("${k}"); fi
        done
        if [ "${#done_folds[@]}" -gt 0 ]; then
            printf '%-9s done (result.json) in fold(s) %s, not submitted\n' "${chain[i]}" "$(array_spec "${done_folds[@]}")"
        fi
    done
    limit=${ARRAY_LIMIT:+%${ARRAY_LIMIT}}
    for (( i = 0; i < ${#chain[@]}; i++ )); do  # one array chain per resume point (usually one)
        group=()
        for (( k = 0; k < folds; k++ )); do
            if [ "${from_stage[k]}" -eq "${i}" ]; then group+=("${k}"); fi
        done
        if [ "${#group[@]}" -eq 0 ]; then continue; fi
        spec=$(array_spec "${group[@]}")
        jid=""
        for stage in "${chain[@]:i}"; do
            jid=$(submit_stage "${stage}" "${jid:+aftercorr:${jid}}" --array="${spec}${limit}" \
                --output="slurm-%x-%A_%a.out")
            printf '%-9s job %s (array %s: one task per fold)\n' "${stage}" "${jid}" "${spec}"
        done
        last_jobs+=("${jid}")
    done
fi
dep=()
if [ "${#last_jobs[@]}" -gt 0 ]; then dep=(--dependency="afterok:$(IFS=:; echo "${last_jobs[*]}")"); fi
jid=$(submit --job-name=ich3d-evaluate "${dep[@]}" "${eval_res[@]}" "${extra[@]}" "${eval_extra[@]}" \
    "${here}/evaluate.sbatch" "${run_dir}")
echo "evaluate  job ${jid}"
echo "run directory: ${run_dir}"
