#!/bin/bash
# Issue 7's GPU acceptance in one call of about 8 minutes, for a session lent a GPU (the `device` tool):
#   1. ../shared/device/prepare.sh --no-weights, then copy every shared pair:
#        cp ../shared/data/carvana/images/* .device-data/images/; cp ../shared/data/carvana/masks/* .device-data/masks/
#      (272 pairs, about 30 MB; the checkpoint does not fit beside them: speed does not depend on the weights, and the
#      dice bar of the nvJPEG path is the cuda-marked test, which skips without ../shared)
#   2. device: command "bash benchmarks/gpu_check.sh", carry [".device-data"], timeout_s 600 (steps: 90+60+60+40+240+60+30+120 s
#      at most; a cold inductor build can take them all: drop its step if the budget is short)
# Logs and JSON reports land in $OUT; put the tables in docs/data.md#on-a-gpu with the card's name.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"; L=$OUT/log.txt
step() { echo "=== $1 $(date +%T)" | tee -a "$L"; }
D=.device-data
IMG="--image_path $D/images --mask_path $D/masks"
step env
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  python3 -c "import torch,sys;print(sys.version.split()[0],torch.__version__,torch.cuda.get_device_name(0))"
  python3 -c "import torchvision; print('torchvision', torchvision.__version__)"; } 2>&1 | tee -a "$L"
step "e2e vs model-only, bs8 fp16, every pair (acceptance: e2e >= 90 % of model-only)"
timeout 90 python3 benchmarks/e2e.py --batch_sizes 8 --json "$OUT/bs8.json" -- $IMG --engine torch,torchscript \
    --precision fp16 --device 0 --loop 50 --warm_counter 10 2>&1 | tail -6 | tee -a "$L"
step "best bs1 fp16 row (acceptance: >= 1000 fps model-only), levers auto vs off, nvjpeg"
timeout 60 python3 benchmarks/e2e.py --batch_sizes 1 --json "$OUT/bs1.json" -- $IMG --limit 64 \
    --engine torch,torchscript --precision fp16 --device 0 --loop 200 --warm_counter 20 2>&1 | tail -5 | tee -a "$L"
timeout 60 python3 benchmarks/e2e.py --batch_sizes 1,8 --json "$OUT/nvjpeg.json" -- $IMG --engine torch \
    --precision fp16 --device 0 --loop 50 --warm_counter 10 --decode nvjpeg 2>&1 | tail -5 | tee -a "$L"
timeout 40 python3 benchmarks/e2e.py --batch_sizes 1 --json "$OUT/bs1_off.json" -- $IMG --limit 16 \
    --engine torch --precision fp16 --device 0 --loop 200 --warm_counter 20 --channels_last off \
    --cuda_graphs off 2>&1 | tail -4 | tee -a "$L"
step "inductor bs1 fp16: a cold AOTInductor max-autotune build (122 s with torch.compile), then its warm load"
timeout 240 python3 benchmarks/e2e.py --batch_sizes 1 --json "$OUT/inductor.json" -- $IMG --limit 16 \
    --engine inductor --precision fp16 --device 0 --loop 200 --warm_counter 20 2>&1 | tail -4 | tee -a "$L"
timeout 60 python3 benchmarks/e2e.py --batch_sizes 1 --json "$OUT/inductor_warm.json" -- $IMG --limit 16 \
    --engine inductor --precision fp16 --device 0 --loop 200 --warm_counter 20 2>&1 | tail -4 | tee -a "$L"
step "decode paths on the GPU host's CPUs"
timeout 30 python3 benchmarks/decode.py $IMG --rounds 1 --limit 128 2>&1 | tail -6 | tee -a "$L"
step "test suite"
timeout 120 python3 -m pytest -q -p no:cacheprovider -n 8 2>&1 | tail -15 | tee -a "$L"
step done
