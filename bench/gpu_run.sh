#!/usr/bin/env bash
# GPU checks with the full-size random-weight model, in stages (each fits one 10-minute device call):
#   bash bench/gpu_run.sh setup        # random 5b model + generated puzzles + training CSV on local disk
#   bash bench/gpu_run.sh train_bench  # bench/train_speed.py: stock vs ours vs the launcher step, 1 GPU
#   bash bench/gpu_run.sh train_runs N # train_single_node.sh on N GPUs: kill -9 mid-run, rerun, resume
#   bash bench/gpu_run.sh train_steady N # train_single_node.sh defaults on N GPUs, 24 steps: median s/step
#   bash bench/gpu_run.sh infer_eval   # bench/infer_speed.py + parallel_eval.py on 1 vs 2 GPUs (eval: the latter only;
#                                      EVAL_LIMIT puzzles, default 6; EVAL_GPUS, default "0 0,1"; EVAL_FLAGS,
#                                      default --no_compile)
#   bash bench/gpu_run.sh infer        # bench/infer_speed.py alone: stock vs ours bf16 vs ours --fp8, one run
#   bash bench/gpu_run.sh train_fp8 N  # bench/train_speed.py: stock, ours bf16, ours --fp8_base, N-step loss curves
#   bash bench/gpu_run.sh train_steady N [FLAGS]  # as above, with extra training flags (e.g. --fp8_base)
#   bash bench/gpu_run.sh block        # bench/block_speed.py: one block's step, RoPE, Inductor and precision variants,
#                                      kernels (BLOCK_FLAGS: its flags, e.g. "--variants shipped --precisions fp8")
#   bash bench/gpu_run.sh fp8_parts    # bench/fp8_check.py + bench/fp8_gemm.py: an FP8 linear's matmuls (row-wise,
#                                      tensor-wise, block scales; fast accumulation) and fused quantisation, timed alone
#   bash bench/gpu_run.sh launcher_idle # bench/train_speed.py, ours bf16 and the launcher's step: where the GPU idles
#   bash bench/gpu_run.sh launcher_trace [FLAGS] # after train_steady 1 [FLAGS] in the same call: its run resumed for
#                                      12 more steps by bench/launcher_trace.py (the launcher's loop under the profiler)
# Results go to $OUT (or ./gpu_results). WORK (default /root/wan_gpu) holds the model and data between stages.
set -uo pipefail
cd "$(dirname "$0")/.."
WORK="${WORK:-/root/wan_gpu}"
OUT="${OUT:-$PWD/gpu_results}"
mkdir -p "$WORK" "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
MODEL="$WORK/model5b"; DATA="$WORK/data"

run_and_kill() {  # run a training command, SIGKILL its whole tree once state $2 is complete, then rerun it
  local log="$1" state="$2"; shift 2
  setsid "$@" > "$log.first" 2>&1 &
  local pid=$!
  for _ in $(seq 1 1200); do [ -f "$state/COMPLETE" ] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 -- "-$pid" 2>/dev/null; wait "$pid"; echo "killed after $(basename "$state") (exit $?)" | tee -a "$log.first"
  "$@" > "$log.second" 2>&1; echo "rerun exit $?" | tee -a "$log.second"
}

case "${1:?stage}" in
  setup)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpus.txt"
    python3 -c "import torch, diffsynth, deepspeed, accelerate, peft; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version(), 'deepspeed', deepspeed.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__)" | tee -a "$OUT/gpus.txt"
    [ -f "$MODEL/Wan2.2_VAE.pth" ] || time python3 -m wan_sft.model_files "$MODEL" --size 5b --device cuda
    [ -f "$DATA/puzzles/maze_square/data.json" ] || python3 prepare_csv.py generate --out "$DATA/puzzles" --task maze_square --num 12 --grid 5..9 \
      --layout vlmpuzzle --width 480 --height 896 --num_frames 81
    python3 prepare_csv.py --dataset_root "$DATA/puzzles" --output "$DATA/train.csv" --val_count 4
    du -sh "$MODEL" "$DATA";;
  train_bench)
    python3 bench/train_speed.py --model_base_path "$MODEL" --steps 5 --checkpoint_blocks 30,auto,0 --deepspeed --out "$OUT/train_speed.json" 2>&1 | grep -v Warning;;
  train_runs)
    for gpus in "${2:-1}"; do
      run="$WORK/run$gpus"; rm -rf "$run"
      run_and_kill "$OUT/train_${gpus}gpu.log" "$run/states/step-00000004" \
        bash train_single_node.sh --dataset "$DATA/train.csv" --output_dir "$run" --model_base_path "$MODEL" \
        --num_gpus "$gpus" --num_epochs 2 --max_steps 8 --save_steps 2
      cp "$run/train_log.jsonl" "$OUT/train_log_${gpus}gpu.jsonl"; ls "$run" "$run/states" >> "$OUT/train_${gpus}gpu.log.second"
    done;;
  train_steady)
    gpus="${2:-1}"; shift 2 || shift $#; name="${gpus}gpu$(echo "$*" | tr -d ' -')"
    run="$WORK/steady_$name"; rm -rf "$run"
    bash train_single_node.sh --dataset "$DATA/train.csv" --output_dir "$run" --model_base_path "$MODEL" \
      --num_gpus "$gpus" --num_epochs 100 --max_steps 24 --save_steps 1000 "$@" > "$OUT/steady_$name.log" 2>&1
    tail -3 "$OUT/steady_$name.log"; cp "$run/train_log.jsonl" "$OUT/steady_log_$name.jsonl"
    python3 bench/train_log_stats.py "$run/train_log.jsonl" | tee -a "$OUT/steady_$name.log"
    du -sh "$run/states"/* "$run"/epoch-0.safetensors | tee -a "$OUT/steady_$name.log";;
  launcher_idle)
    python3 bench/train_speed.py --model_base_path "$MODEL" --steps 5 --checkpoint_blocks auto --deepspeed --skip_stock \
      --out "$OUT/launcher_idle.json" 2>&1 | grep -v Warning | tail -40;;
  launcher_trace)
    shift; name="1gpu$(echo "$*" | tr -d ' -')"
    cmd=$(sed -n 's/^+ //p' "$OUT/steady_$name.log" | head -1)
    cmd=$(echo "$cmd" | sed -e 's| -m wan_sft.train | bench/launcher_trace.py |' -e 's| --max_steps 24 | --max_steps 36 |')
    mkdir -p "$WORK/trace_$name"; TRACE_OUT="$WORK/trace_$name" eval "$cmd" > "$OUT/launcher_trace_$name.log" 2>&1
    tr '\r' '\n' < "$OUT/launcher_trace_$name.log" | grep -v "Warning\|^train: " | tail -45;;
  block)
    python3 bench/block_speed.py --out "$OUT/block_speed.json" ${BLOCK_FLAGS:-} 2>&1 | grep -v Warning | tail -12;;
  fp8_parts)
    python3 bench/fp8_check.py 2>&1 | grep -v Warning | tee "$OUT/fp8_check.log"
    python3 bench/fp8_gemm.py --out "$OUT/fp8_gemm.json" 2>&1 | grep -v Warning | tail -8;;
  infer)
    python3 bench/infer_speed.py --model_base_path "$MODEL" --out "$OUT/infer_speed.json" 2>&1 | grep -v Warning | tail -30;;
  train_fp8)
    python3 bench/train_speed.py --model_base_path "$MODEL" --steps 5 --checkpoint_blocks "${CKPT:-auto}" --fp8 \
      --loss_steps "${2:-200}" ${SKIP_STOCK:+--skip_stock} --out "$OUT/train_speed_fp8.json" 2>&1 | grep -v Warning | tail -30;;
  infer_eval|eval)
    [ "$1" = eval ] || python3 bench/infer_speed.py --model_base_path "$MODEL" --out "$OUT/infer_speed.json" 2>&1 | grep -v Warning | tail -15
    for gpus in ${EVAL_GPUS:-0 0,1}; do
      python3 parallel_eval.py --dataset_root "$DATA/puzzles" --output_dir "$WORK/eval_${gpus/,/_}" --gpus "$gpus" \
        --model_base_path "$MODEL" --limit "${EVAL_LIMIT:-6}" --num_inference_steps 10 ${EVAL_FLAGS:---no_compile} \
        > "$OUT/eval_${gpus/,/_}.log" 2>&1
      tail -15 "$OUT/eval_${gpus/,/_}.log"; cp "$WORK/eval_${gpus/,/_}/summary.json" "$OUT/eval_summary_${gpus/,/_}.json"
    done;;
esac
