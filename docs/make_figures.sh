#!/usr/bin/env bash
# Makes every figure in docs/img from the commands the docs name. Run from the repository root with
# the package installed: bash docs/make_figures.sh [MNIST_DIR]
# The shipped class-conditioned model is diffkit/weights/mnist-class; its training run (see
# docs/mnist.md) left its loss curve and epoch sample grids in runs/mnist-class/.
set -euo pipefail
DATA=${1:-../shared/data/mnist}
IMG=docs/img
R=runs
DK=".venv/bin/diffkit"
mkdir -p $IMG $R

# Inputs for the technique examples: a test digit (a 7) and a mask of its top half.
.venv/bin/python - <<PY
from diffkit.mnist import data; from diffkit import io; import torch
x, y = data.load("test", "$DATA")
io.save_png(x[0], "$IMG/digit7.png")
m = torch.zeros(1, 28, 28); m[:, :14] = 1; io.save_png(m, "$IMG/mask_top.png")
PY

# Techniques (docs/techniques.md)
$DK sample --backend mnist --class 0,1,2,3,4,5,6,7,8,9 --num 4 --hook cfg:5 --out $R/fig-cfg --overwrite
$DK sample --backend mnist --class 9 --num 4 --hook cfg:5 --hook anagram:6,view=rot180 --out $R/fig-anagram --overwrite
$DK sample --backend mnist --class 0 --num 4 --hook cfg:5 --hook hybrid:1,kernel=9,sigma=2 --out $R/fig-hybrid --overwrite
$DK sample --backend mnist --class 3 --num 4 --hook cfg:5 --hook inpaint:image=$IMG/digit7.png,mask=$IMG/mask_top.png --out $R/fig-inpaint --overwrite
$DK sample --backend mnist --class 7 --num 3 --hook cfg:5 --hook sdedit:image=$IMG/digit7.png --sweep i_start=150,220,260,280,290 --out $R/fig-sdedit --overwrite
cp $R/fig-cfg/grid.png $IMG/cfg.png; cp $R/fig-anagram/grid.png $IMG/anagram.png; cp $R/fig-hybrid/grid.png $IMG/hybrid.png
cp $R/fig-inpaint/grid.png $IMG/inpaint.png; cp $R/fig-sdedit/sweep.png $IMG/sdedit-sweep.png

# MNIST (docs/mnist.md): forward process, one-step denoiser after 1 and 5 epochs, out of distribution
$DK noise $IMG/digit7.png --t 0,50,100,150,200,250,299 --out $IMG/noise.png --overwrite
[ -f $R/denoiser/checkpoint/config.json ] || $DK train mnist --objective denoise --hidden 32 --epochs 5 --subset 12000 --sample-epochs 1,5 --data $DATA --out $R/denoiser
$DK denoise --checkpoint $R/denoiser/epoch-001 --sigmas 0.5 --data $DATA --out $IMG/denoiser-epoch1.png --overwrite
$DK denoise --checkpoint $R/denoiser/epoch-005 --sigmas 0.5 --data $DATA --out $IMG/denoiser-epoch5.png --overwrite
$DK denoise --checkpoint $R/denoiser/checkpoint --data $DATA --out $IMG/denoiser-ood.png --overwrite
cp $R/denoiser/loss.png $IMG/loss-denoiser.png
# time-conditioned DDPM (unconditional samples after 1 and 5 epochs)
[ -f $R/mnist-time/checkpoint/config.json ] || $DK train mnist --objective ddpm --conditioning time --hidden 32 --epochs 5 --subset 20000 --sample-epochs 1,5 --data $DATA --out $R/mnist-time
cp $R/mnist-time/samples-epoch-001.png $IMG/time-epoch1.png; cp $R/mnist-time/samples-epoch-005.png $IMG/time-epoch5.png
cp $R/mnist-time/loss.png $IMG/loss-time.png
# class-conditioned: the shipped model's run
cp $R/mnist-class-v2/samples-epoch-005.png $IMG/class-epoch5.png; cp $R/mnist-class-v2/samples-epoch-015.png $IMG/class-epoch15.png
cp $R/mnist-class-v2/loss.png $IMG/loss-class.png
# a sampling GIF and the blur / one-step / iterative study on MNIST
$DK sample --backend mnist --class 0,1,2,3,4,5,6,7,8,9 --num 1 --hook cfg:5 --save-every 10 --out $R/fig-gif --overwrite
cp $R/fig-gif/trajectory.gif $IMG/sampling.gif

$DK denoise $IMG/digit7.png --prompt 7 --t 100,200,299 --stride 3 --out $IMG/partA-denoise.png --overwrite
$DK eval mnist --data $DATA --out $IMG/eval.json

# docs/quality.md: the recommended recipe on the quality model, 8 a class, as benchmarks/quality.py grids the others
grid8() {   # RUN_DIR PNG: the run's samples 8 a row (one digit a row), as benchmarks/quality.py grids them
  .venv/bin/python -c "from safetensors.torch import load_file; from diffkit import io; io.save_png(io.grid(load_file('$1/final.safetensors')['stage1_images'], 8), '$2')"
}
$DK sample --backend mnist --checkpoint mnist-h64 --class 0,1,2,3,4,5,6,7,8,9 --num 8 --hook cfg:1.5 --sampler dpmpp_2m_sde --steps 20 --out $R/fig-h64 --overwrite
grid8 $R/fig-h64 $IMG/quality-grid-h64-cfg-1-5.png
for m in mnist-h64 mnist-h64-ema; do   # the two at the recipe chosen at N = 2,000, same seeds
  $DK sample --backend mnist --checkpoint $m --class 0,1,2,3,4,5,6,7,8,9 --num 8 --hook cfg:1.4 --sampler dpmpp_2m_sde --steps 50 --out $R/fig-$m-cfg14 --overwrite
  grid8 $R/fig-$m-cfg14 $IMG/quality-grid-$m-cfg-1-4-50.png
done
cp runs/mnist-h64-ema/loss.png $IMG/loss-h64-ema.png 2>/dev/null || echo "runs/mnist-h64-ema (the averaged model's run) is not here; docs/img/loss-h64-ema.png kept"
cp runs/mnist-h64/loss.png $IMG/loss-h64.png 2>/dev/null || echo "runs/mnist-h64 (the quality model's GPU training run) is not here; docs/img/loss-h64.png kept"

# The UI (docs/ui.md): the screenshot of a finished run, taken by its browser test
DIFFKIT_UI_SCREENSHOT=$IMG/ui.png .venv/bin/pytest -q tests/test_ui.py -k cfg_5
