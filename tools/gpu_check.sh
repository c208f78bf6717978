#!/usr/bin/env bash
# What a session lent a GPU runs (the device tool; CI has none): tests/test_gpu.py, benchmarks/gpu.py
# (the MNIST model's calls and bytes on the GPU), benchmarks/if_gpu.py on an IF-shaped random stage I
# for three samplers, benchmarks/sd_gpu.py on an SD-1.5-shaped random model and
# benchmarks/flow_vs_diffusers.py --shaped on SD3.5-medium- and Flux.1-dev-shaped random models (bf16, 1024 px). Needs, in .whl/, the wheels of diffusers and transformers as pinned in
# constraints.txt and of diffkit itself (`pip wheel --no-deps -w .whl .`); logs go to $OUT (or /tmp/gpu-out).
set -uo pipefail
out="${OUT:-/tmp/gpu-out}"; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'transformers', transformers.__version__, torch.cuda.get_device_name())"
timeout 240 python3 -m pytest -q -rA -s -p no:cacheprovider tests/test_gpu.py 2>&1 | grep -v -i warn | tee "$out/test_gpu.log" | tail -45
timeout 200 python3 benchmarks/gpu.py --out "$out/gpu.json" 2>&1 | tee "$out/gpu.log"
for s in "ddpm" "dpmpp_2m --steps 20" "euler --steps 20"; do
  # shellcheck disable=SC2086
  timeout 120 python3 benchmarks/if_gpu.py --shaped /tmp/if-shaped --sampler $s 2>&1 | grep -v -i -E "warn|it/s|Loading" | tee -a "$out/if_gpu.log"
done
timeout 240 python3 benchmarks/sd_gpu.py --shaped /tmp/sd-shaped 2>&1 | grep -v -i -E "warn|it/s|Loading" | tee "$out/sd_gpu.log"
cp benchmarks/results/sd_gpu.json "$out/" 2>/dev/null
# the flow families at full size: SD3.5 medium (2.2 B) whole; Flux.1 dev (12 B) whole when the disk and
# time allow (its random init and a 24 GB save take minutes), else --layers 5 says the per-block cost
timeout 300 python3 benchmarks/flow_vs_diffusers.py --shaped --family sd3 --dtype bf16 --steps 28 --repeats 3 \
  --out "$out/flow_shaped_sd3.json" 2>&1 | grep -v -i -E "warn|it/s|Loading" | tee "$out/flow_shaped.log"
timeout 400 python3 benchmarks/flow_vs_diffusers.py --shaped --family flux --dtype bf16 --steps 28 --repeats 3 \
  --out "$out/flow_shaped_flux.json" 2>&1 | grep -v -i -E "warn|it/s|Loading" | tee -a "$out/flow_shaped.log"
