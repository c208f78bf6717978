"""Run a matrix of diffkit commands and record the sha256 of every file each writes (and what each
prints on stdout), so that a refactor's "no output bytes change" is a stored comparison, not a claim.

    python tools/output_matrix.py record OUT.json            # this checkout's outputs
    PYTHONPATH=/tmp/base python tools/output_matrix.py record BASE.json   # another checkout's
    python tools/output_matrix.py compare BASE.json OUT.json [--store RESULT.json]

Float results depend on the CPU (kernels choose their summation order), so the two records must come
from one machine; the comparison is stored with both commits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Every command writes into {out}; {img} is a small RGB picture made here. Fast ones only (the shipped
# MNIST model and the exact Gaussian backend), covering each command that writes files.
DATA = Path(__file__).resolve().parents[2] / "shared/data/mnist"  # ../shared beside the checkout
COMMANDS = [
    "sample -c 3,7 -n 2 -H cfg:3 --steps 5 -o {out}",
    "sample -c 1 -n 3 --sampler ddim --steps 4 --batch-size 2 --save-every 2 -o {out}",
    "sample -c 4 -n 2 -H cfg:2 -H anagram:8,view=flip_v --steps 4 -o {out} --animate",
    "sample -c 2 -n 1 -H hybrid:5 --steps 4 --sampler euler -o {out}",
    # every built-in view's motion, animated
    "sample -c 4 -n 1 -H anagram:prompt=8,prompt=2,prompt=5,prompt=1,view=jigsaw,view=inner_circle,"
    "view=square_hinge,view=negate --steps 3 -o {out} --animate",
    "sample -c 6 -n 1 -H anagram:prompt=9,prompt=3,prompt=0,prompt=7,prompt=2,view=skew,view=rot90,view=transpose,"
    "view=flip_h,view=pixel_permute:7 --steps 3 -o {out} --animate",
    "sample -c 1 -n 1 -H factorize:prompt=7,parts=low_pass+high_pass --steps 3 -o {out} --animate",
    "sample -c 5 -n 2 -H sdedit:image={img},strength=0.5 --steps 6 -o {out}",
    "sample -c 6 -n 1 -H inpaint:image={img},mask={mask} --steps 4 -o {out}",
    "sample -b gaussian -c 0,1 -n 2 --steps 3 -o {out}",
    "sample -c 3 -n 1 --steps 3 --sweep seed=0,5 -o {out}",
    "sample -c 3 -n 1 -H cfg:2 --sampler dpmpp_2m_sde --steps 4 --checkpoint mnist-weak -o {out}",
    "noise {img} --t 50,150 -o {out}/noise.png",
    "denoise {img} --t 100 --stride 100 -o {out}/denoise.png",
    "eval mnist -n 2 --steps 2 --data {data} --out {out}/eval.json",
]


def pictures(folder: Path) -> tuple[Path, Path]:
    from PIL import Image

    img = Image.new("RGB", (40, 40))
    img.putdata([((7 * i) % 256, (3 * i) % 256, (11 * i) % 256) for i in range(40 * 40)])
    img.save(folder / "img.png")
    mask = Image.new("L", (40, 40))
    mask.putdata([255 if (i % 40) < 20 else 0 for i in range(40 * 40)])
    mask.save(folder / "mask.png")
    return folder / "img.png", folder / "mask.png"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record(path: str) -> None:
    import diffkit

    root = str(Path(diffkit.__file__).resolve().parent.parent)  # the checkout: shipped weights' paths name it
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        img, mask = pictures(Path(tmp))
        for k, cmd in enumerate(COMMANDS):
            out = Path(tmp) / f"c{k}"
            argv = cmd.format(out=out, img=img, mask=mask, data=DATA).split()
            if not cmd.startswith("sample"):
                out.mkdir()
            proc = subprocess.run([sys.executable, "-m", "diffkit", *argv], capture_output=True, text=True,
                                  cwd=tmp, env=dict(os.environ, PYTHONHASHSEED="0"))
            files = {str(p.relative_to(out)): digest(p) for p in sorted(out.rglob("*")) if p.is_file()}
            # paths of this temporary folder and of the checkout differ between records: masked in JSON texts
            for p in sorted(out.rglob("*.json")):
                text = p.read_text().replace(tmp, "TMP").replace(root, "ROOT")
                files[str(p.relative_to(out))] = hashlib.sha256(text.encode()).hexdigest()
            results[cmd] = {"rc": proc.returncode, "files": files,
                            "stdout": hashlib.sha256(proc.stdout.replace(tmp, "TMP").replace(root, "ROOT").encode()).hexdigest()}
            print(f"{proc.returncode} {len(files):3d} files  {cmd}", flush=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)

    Path(path).write_text(json.dumps({"diffkit": str(Path(diffkit.__file__).parent), "commit": commit(
        Path(diffkit.__file__).parent.parent), "commands": results}, indent=1) + "\n")


def commit(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def compare(base: str, new: str, store: str | None) -> int:
    a, b = json.loads(Path(base).read_text()), json.loads(Path(new).read_text())
    rows, bad = [], 0
    for cmd in a["commands"]:
        x, y = a["commands"][cmd], b["commands"].get(cmd)
        same = y is not None and x == y
        if not same:
            bad += 1
            differ = sorted(f for f in set(x["files"]) | set((y or {}).get("files", {}))
                            if x["files"].get(f) != (y or {}).get("files", {}).get(f))
            if y and x["stdout"] != y["stdout"]:
                differ.append("stdout")
            print(f"DIFFERS {cmd}: {differ}{' rc' if y and x['rc'] != y['rc'] else ''}")
        rows.append({"command": cmd, "files": len(x["files"]), "same_bytes": same,
                     **({} if same else {"differ": differ})})
    print(f"{len(rows) - bad} of {len(rows)} commands write the same bytes "
          f"({sum(r['files'] for r in rows)} files)")
    if store:
        import platform

        Path(store).write_text(json.dumps({
            "what": "every file each command writes, and its stdout, byte for byte: base commit against new",
            "base_commit": a["commit"], "commit": b["commit"], "machine": platform.processor() or platform.machine(),
            "commands": rows, "same": len(rows) - bad, "of": len(rows)}, indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("record")
    r.add_argument("out")
    c = sub.add_parser("compare")
    c.add_argument("base")
    c.add_argument("new")
    c.add_argument("--store")
    args = ap.parse_args()
    if args.what == "record":
        record(args.out)
    else:
        sys.exit(compare(args.base, args.new, args.store))
