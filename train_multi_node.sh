#!/usr/bin/env bash
# LoRA-train Wan2.2-TI2V-5B on several nodes of a Slurm cluster (one launcher per node, requeue-safe).
#   bash train_multi_node.sh --dataset ./dataset.csv --num_nodes 15 --gpus_per_node 8 [--lora_rank 32] ...
#       validates everything, writes <output_dir>/accelerate_config.yaml and <output_dir>/multi_node.sbatch,
#       submits it with sbatch and prints the job id and log path (<output_dir>/slurm-<jobid>.out)
#   ... --dry_run                     print the sbatch script and the per-node launch commands, submit nothing
#   ... --sbatch_args "--partition gpu --account x --time 2-00:00:00"   (SBATCH_* environment variables work too)
#   ... --cpu                         CPU nodes: --gpus_per_node CPU processes per node (gloo), no GPUs requested
#   sbatch --nodes=2 [--gpus-per-node=8] train_multi_node.sh --dataset ...   also works (runs the in-job part)
# Environment: MODEL_BASE_PATH (model folder), DIFFSYNTH_PATH (optional DiffSynth checkout to use instead of the
# installed package). Every training flag of train_single_node.sh, same defaults, except
# --output_dir ./output/wan_lora_multi. Resubmitting the same command resumes from the newest complete state.
# The #SBATCH lines below only matter for `sbatch train_multi_node.sh` (a submission writes its own script).
#SBATCH --job-name=wan_lora
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
set -euo pipefail
if [ -n "${SLURM_JOB_ID:-}" ] && [ -n "${SLURM_SUBMIT_DIR:-}" ]; then
  HERE="$SLURM_SUBMIT_DIR"  # sbatch runs a copy of this script: find the checkout from the submit directory
  [ -f "$HERE/wan_sft/slurm.py" ] || HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
else
  HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fi

export PYTHONPATH="$HERE${DIFFSYNTH_PATH:+:$DIFFSYNTH_PATH}${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"

exec "$PYTHON" -m wan_sft.slurm "$@"
