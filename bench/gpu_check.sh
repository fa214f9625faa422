#!/usr/bin/env bash
# The GPU checks, as one prepared run on a lent GPU machine (CI never has one):
#   1. bench/gpu_train_check.py: the training loop on CUDA, fp32 / bf16 / fp16, plain and
#      DeepSpeed ZeRO-0/2, BERT and GPT: loss must fall, tokens/s and MFU printed;
#   2. bench/pretrain_throughput.py at BERT-base and BERT-mini, ours vs Hugging Face on the GPU;
#   3. its --profile: where a BERT-base step spends GPU time, and which attention kernel ran.
# Each part has its own time limit; a failing part is reported and the next one runs.
#   bash bench/gpu_check.sh            (logs under $OUT, or bench-out/ when OUT is unset)
# Packages the machine lacks (pydantic, hjson, DeepSpeed) travel in .gpu/ when present; make it
# here with `bash bench/gpu_check.sh --make-carry` (needs this checkout's .venv), then carry .gpu.
set -u
if [ "${1:-}" = "--make-carry" ]; then
  set -e
  mkdir -p .gpu/whl .gpu/site
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 hjson==3.1.0
  site=$(.venv/bin/python -c 'import deepspeed, os; print(os.path.dirname(os.path.dirname(deepspeed.__file__)))')
  cp -r "$site"/deepspeed "$site"/deepspeed-*.dist-info .gpu/site/
  find .gpu/site -name __pycache__ -prune -exec rm -rf {} +
  exit 0
fi
out=${OUT:-bench-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ -d .gpu/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/.gpu/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
part() {  # name, seconds, command...
  local name=$1 secs=$2; shift 2
  echo "== $name"
  local t0=$SECONDS
  timeout "$secs" "$@" 2>&1 | grep -v -E "^\[[0-9-]+ [0-9:,]+\] \[(INFO|WARNING)\]" | tee "$out/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}
part train_check 150 python3 bench/gpu_train_check.py --steps 40
part throughput_base 170 python3 bench/pretrain_throughput.py --device cuda --size base --steps 20 --repeats 3
part profile_base 60 python3 bench/pretrain_throughput.py --device cuda --size base --profile
part throughput_mini 90 python3 bench/pretrain_throughput.py --device cuda --size mini --steps 30 --repeats 3 --no-compile
