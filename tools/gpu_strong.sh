#!/usr/bin/env bash
# The stronger MNIST model of issue 11 on a lent GPU (the device tool; see tools/gpu_check.sh for the wheels
# in .whl/): the training tests on CUDA, then `diffkit train mnist` at the seed's defaults (hidden 64,
# 20 epochs, batch 128) with --device cuda, then benchmarks/seeds.py over the new model (and the shipped
# one, as a same-device baseline). Everything lands in $OUT (or /tmp/gpu-out); the MNIST files in $1.
set -uo pipefail
data="${1:-../shared/data/mnist}"
out="${OUT:-/tmp/gpu-out}"; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi -L
DIFFKIT_TEST_MNIST="$data" timeout 150 python3 -m pytest -q -rA -s -p no:cacheprovider tests/test_gpu.py -k training 2>&1 \
  | grep -v -i warn | tee "$out/test_train.log" | tail -8
t0=$SECONDS
timeout 420 python3 -m diffkit train mnist --out "$out/mnist-h64" --objective ddpm --conditioning class --device cuda \
  --data "$data" 2>&1 | grep -E "^epoch|done|error" | tee "$out/train.log"
echo "train: $((SECONDS - t0)) s"
rm -f "$out/mnist-h64/checkpoint/state.pt"   # the optimizer state: not shipped, and 2x the weights
seeds() { python3 benchmarks/seeds.py --device cuda --data "$data" --out "$out/seeds.jsonl" "$@" 2>&1 | grep -v -i warn; }
seeds --checkpoint "$out/mnist-h64/checkpoint" --hooks cfg:1 cfg:1.3 cfg:1.5 cfg:1.2 cfg:1.4 cfg:1.7 cfg:2 \
  | tee -a "$out/seeds.log"
seeds --hooks cfg:1.5 cfg:1.6 | tee -a "$out/seeds.log"
seeds --checkpoint "$out/mnist-h64/checkpoint" --hooks autoguide:1.5 autoguide:2 cfg:1.5,hi=0.6 | tee -a "$out/seeds.log"
