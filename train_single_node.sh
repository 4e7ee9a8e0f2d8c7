#!/usr/bin/env bash
# LoRA-train Wan2.2-TI2V-5B on all GPUs of this node (CPU processes when there are none).
#   bash train_single_node.sh --dataset ./dataset.csv [--output_dir ./output/wan_lora] [--num_gpus N] ...
#   bash train_single_node.sh --demo        # tiny model + generated mazes under ./demo, on CPU
# Environment: MODEL_BASE_PATH (model folder), DIFFSYNTH_PATH (optional DiffSynth checkout to use instead of the
# installed package). Re-running the same command resumes from the newest complete state in --output_dir.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

export PYTHONPATH="$HERE${DIFFSYNTH_PATH:+:$DIFFSYNTH_PATH}${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"

exec "$PYTHON" -m wan_sft.launch single "$@"
