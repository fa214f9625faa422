#!/usr/bin/env bash
# The GPU checks, as one prepared run of at most 8 minutes on a lent GPU machine (CI never has
# one). Each part has its own time limit; a failing part is reported and the next one runs:
#   1. train_check: bench/gpu_train_check.py, the training loop on CUDA in fp32 / bf16 / fp16,
#      plain and DeepSpeed ZeRO-0/2, BERT and GPT mini: loss must fall, tokens/s and MFU;
#   2. pretrain_base_zero2: the same loop on BERT-base in bf16 under ZeRO-2 (tokens/s, MFU);
#   3. throughput_base: bench/pretrain_throughput.py, BERT-base ours vs Hugging Face on the GPU;
#   4. activation_memory: bench/activation_memory.py at BERT/GPT-base, 8 x 512 tokens,
#      activation checkpointing off and on (kept bytes and the CUDA allocator's peak);
#   5. finetune_bf16: bench/gpu_task_check.py, jobs/finetune.py (Ray Tune) running a trial on
#      the GPU with bf16 autocast, promoted into a fresh registry;
#   6. serve_gpu: bench/serve_load.py --replica-gpus 1 on that model, Ray Serve vs plain FastAPI.
#   bash bench/gpu_check.sh            (logs under $OUT, or bench-out/ when OUT is unset)
#   bash bench/gpu_check.sh --more     (also: a profile of a BERT-base step, BERT-mini throughput)
#   bash bench/gpu_check.sh --dry-run  (on any machine: print the plan, check that it fits in 8
#                                       minutes and that every script takes its arguments)
# Packages the machine's image lacks (Ray, DeepSpeed, pydantic, FastAPI, datasets, …) travel in
# .gpu/ when present; make it here with `bash bench/gpu_check.sh --make-carry` (needs this
# checkout's .venv and the package index), then carry .gpu.
set -u
BUDGET=480    # seconds: the whole run, setup included
SETUP=40      # seconds set aside for installing the carried packages and the device query
CALL_LIMIT=600  # seconds one device call may run: --more must fit in it too
case "${1:-}" in
  --make-carry) exec bash "$(dirname "$0")/gpu_carry.sh" ;;
  --dry-run) dry=1 ;;
  *) dry=0 ;;
esac
more=0; [ "${1:-}" = "--more" ] && more=1
out=${OUT:-bench-out}
planned=$SETUP failed=0
part() {  # name, seconds, python3 script args...
  local name=$1 secs=$2; shift 2
  planned=$((planned + secs))
  if [ "$dry" = 1 ]; then
    printf 'plan %-20s %4d s  %s\n' "$name" "$secs" "$*"
    python3 bench/plan_check.py "${@:2}" >/dev/null || { echo "plan $name: its arguments do not parse"; failed=1; }
    return
  fi
  echo "== $name"
  local t0=$SECONDS
  # -k: a process that ignores TERM (a Ray driver mid-shutdown) is killed 5 s later
  timeout -k 5 "$secs" "$@" 2>&1 | grep -v -E "^\[[0-9-]+ [0-9:,]+\] \[(INFO|WARNING)\]" | tee "$out/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  [ "$rc" = 0 ] || failed=1
}
if [ "$dry" = 0 ]; then
  mkdir -p "$out"
  export PYTHONUNBUFFERED=1
  if [ -d .gpu/whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
    for t in .gpu/*.tar.xz; do [ -f "$t" ] && { tar -xJf "$t" -C /tmp/site || exit 1; }; done
    export PYTHONPATH=/tmp/site
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
fi
part train_check 80 python3 bench/gpu_train_check.py --steps 30
part pretrain_base_zero2 45 python3 bench/gpu_train_check.py --size base --only bert/bf16/deepspeed-zero2 --steps 20
part throughput_base 85 python3 bench/pretrain_throughput.py --device cuda --size base --steps 15 --repeats 2
part activation_memory 40 python3 bench/activation_memory.py --device cuda --size base --seq 512 --batch 8 --repeats 2
part finetune_bf16 100 python3 bench/gpu_task_check.py --out "$out/task" --device cuda --epochs 2
if [ "$dry" = 1 ] || [ -d "$out/task/registry/tasks" ]; then  # else nothing to serve: 90 s saved
  part serve_gpu 90 python3 bench/serve_load.py --registry "$out/task/registry" --task sentiment-sample --replica-gpus 1 --seconds 5 --warmup 1 --concurrency 8,32
fi
budget_base=$planned
if [ "$more" = 1 ] || [ "$dry" = 1 ]; then
  [ "$dry" = 1 ] && echo "plan (with --more, beyond the 8 minutes):"
  part profile_base 45 python3 bench/pretrain_throughput.py --device cuda --size base --profile
  part throughput_mini 60 python3 bench/pretrain_throughput.py --device cuda --size mini --steps 30 --repeats 2 --no-compile
fi
if [ "$dry" = 1 ]; then
  echo "plan with --more: ${planned}s of the ${CALL_LIMIT}s one device call may run"
  if [ "$planned" -gt "$CALL_LIMIT" ]; then echo "plan: --more is over a call's limit"; failed=1; fi
  echo "plan: ${budget_base}s of ${BUDGET}s (setup ${SETUP}s included)"
  if [ "$budget_base" -gt "$BUDGET" ]; then echo "plan: over the budget"; failed=1; fi
fi
exit $failed
