#!/usr/bin/env bash
# The gallery of docs/illusions.md: every illusion on the shipped quality MNIST model, each sample beside
# its views, and an animation of the first. Run from the repository root with the package installed
# (and imageio-ffmpeg for the MP4s it leaves in runs/): bash docs/make_illusions.sh
set -euo pipefail
IMG=docs/img/illusions
R=runs/illusions
DK=".venv/bin/diffkit"
mkdir -p $IMG $R
COMMON="--backend mnist --checkpoint mnist-h64 --num 4 --seed 0 --sampler dpmpp_2m --steps 30 --overwrite"

# name | the sample's class | hooks
while IFS='|' read -r name cls hooks; do
  [ -z "$name" ] && continue
  anim=$([ "$name" = reference ] && echo "" || echo --animate)  # one prompt: nothing moves
  eval "$DK sample $COMMON $anim --class $cls $hooks --out $R/$name"
done <<'LIST'
rotate_180|6|--hook cfg:3 --hook anagram:9,view=rotate_180
flip|1|--hook cfg:3 --hook anagram:7,view=flip
rotate_cw|1|--hook cfg:3 --hook anagram:7,view=rotate_cw
three_views|1|--hook cfg:3 --hook anagram:7,4,view=rotate_cw,view=rotate_180
skew|1|--hook cfg:3 --hook 'anagram:7,view="skew:factor=0.5"'
inner_circle|0|--hook cfg:3 --hook anagram:8,view=inner_circle
square_hinge|3|--hook cfg:3 --hook anagram:5,view=square_hinge
jigsaw|4|--hook cfg:3 --hook anagram:9,view=jigsaw
patch_permute|2|--hook cfg:3 --hook 'anagram:5,view="patch_permute:4"'
hybrid|0|--hook cfg:3 --hook 'factorize:1,parts="low_pass:sigma=2,kernel=9+high_pass:sigma=2,kernel=9"'
motion|8|--hook cfg:3 --hook factorize:3,parts=motion+motion_res
reference|1|--hook cfg:3 --hook 'reference:image=docs/img/digit7.png,part="low_pass:sigma=2,kernel=9"'
LIST

# each sample beside its views (anagrams), or alone (factorized); the first sample's animation
.venv/bin/python - <<'PY'
import json
from pathlib import Path

import torch

from diffkit import io

R, IMG = Path("runs/illusions"), Path("docs/img/illusions")
for run in sorted(p for p in R.iterdir() if (p / "run.json").is_file()):
    meta = json.loads((run / "run.json").read_text())
    samples = [io.load_png(run / s["file"]) for s in meta["samples"]]
    cols, titles = [torch.stack(samples)], [f"class {meta['samples'][0]['label']}"]
    hook = meta["request"]["hooks"][-1]
    if hook["name"] == "anagram":
        for j, (view, prompt) in enumerate(zip(hook["args"]["view"], hook["args"]["prompt"]), 1):
            cols.append(torch.stack([io.load_png(run / f"{Path(s['file']).stem}.view{j}.png") for s in meta["samples"]]))
            titles.append(f"{view.split(':')[0]}: {prompt}")
    io.save_png(io.labelled_columns(cols, titles), IMG / f"{run.name}.png")
    for gif in sorted(run.glob("sample-000.*.gif"))[:1]:
        (IMG / f"{run.name}.gif").write_bytes(gif.read_bytes())
PY
ls -la $IMG
