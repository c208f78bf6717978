"""The checked list of hand-made mutations: each breaks a technique's meaning on purpose; a test must fail.

    .venv/bin/python tools/mutations.py            # all; about 3 minutes on 2 cores; writes benchmarks/results/mutations.json
    .venv/bin/python tools/mutations.py sdedit     # those whose name contains "sdedit"

Each mutation replaces one exact piece of source text, runs the tests named for it, and restores the
file whatever happens. It prints KILLED (a test failed, as it should) or SURVIVED, and exits 1 if any
survived, or before any run if a mutation's text is no longer in its file (STALE: it would test nothing;
tests/test_docs.py checks that too, on every run). Not part of CI: it runs the suite once per mutation. tools/cosmic_ray.sh runs the
automatic mutation tool over the same code; docs/testing.md reports both.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REF = "tests/test_if_reference.py"
TECH = "tests/test_techniques.py"
SAMP = "tests/test_samplers.py"
IFS = "tests/test_if_samplers.py"
FLOW = "tests/test_flow.py"
GUIDE = "tests/test_guiders.py"
SCORE = "tests/test_score.py"
PERT = "tests/test_perturbed.py"
GLASS = "tests/test_lookingglass.py"

# (name, file, source text, replacement, tests that must catch it)
MUTATIONS = [
    ("anagram keeps only the first estimate", "plugins/anagram.py",
     "return torch.stack(mapped).mean(0)", "return mapped[0]", [TECH, REF]),
    ("anagram forgets to map back through the view", "plugins/anagram.py",
     "[v.inverse(e) for v, e in", "[e for v, e in", [TECH, REF]),
    ("anagram maps back with the forward view", "plugins/anagram.py",
     "[v.inverse(e) for v, e in", "[v.forward(e) for v, e in", [TECH, REF]),
    ("anagram: the other prompt's branch is unconditional", "plugins/anagram.py",
     "query.cond if query.cond.is_null else self.conds[j - 1]", "query.cond", [REF]),
    ("variance negated with the view", "diffkit/denoise.py",
     "extra = get_view(name).unpermute(extra)", "extra = get_view(name).inverse(extra)", [REF]),
    ("variance not moved back with its pixels", "diffkit/denoise.py",
     "extra = get_view(name).unpermute(extra)", "extra = extra", [REF]),
    ("variance of the first branch instead of the mean", "diffkit/denoise.py",
     "                    extra = torch.stack([_unview_pixels(combiner, q, b, e[:, end:]) for b, e in zip(g, ests)]).mean(0)",
     "                    extra = _unview_pixels(combiner, q, g[0], ests[0][:, end:])", [REF]),
    ("hybrid swaps the low and the high prompt", "plugins/hybrid.py",
     "return lowpass(e1, self.kernel, self.sigma) + highpass(e2, self.kernel, self.sigma)",
     "return lowpass(e2, self.kernel, self.sigma) + highpass(e1, self.kernel, self.sigma)", [TECH, REF]),
    ("hybrid does not scale its cut in stage II", "plugins/hybrid.py",
     'factor = 1.0 if self.args["fixed"] else ctx.size_factor', "factor = 1.0", [REF]),
    ("hybrid kernel scaled but not made odd", "diffkit/filters.py",
     "return k + (k % 2 == 0), sigma * factor", "return k, sigma * factor", [REF]),
    ("cfg: guidance sign inverted", "plugins/cfg.py",
     "return eps_u + scale * (eps_c - eps_u)", "return eps_u - scale * (eps_c - eps_u)", ["tests/test_cfg.py", REF]),
    ("cfg keeps the unconditional variance", "plugins/cfg.py",
     'extra_channels = "first"', 'extra_channels = "mean"', ["tests/test_deepfloyd.py"]),
    ("RePaint resampling is a no-op", "plugins/inpaint.py",
     "for _ in range(r - 1):", "for _ in range(0):", [REF]),
    ("RePaint skips resample=2 (cosmic-ray found this one)", "plugins/inpaint.py",
     "if r == 1 or step.t_next < 0", "if r <= 2 or step.t_next < 0", [REF]),
    ("RePaint does not resample the step into t=0 (cosmic-ray found this one)", "plugins/inpaint.py",
     "or step.t_next < 0 or", "or step.t_next <= 0 or", [REF]),
    ("inpaint's known region noiseless already at t=0 (cosmic-ray)", "plugins/inpaint.py",
     "if t < 0:\n            return self.x_orig", "if t < 1:\n            return self.x_orig", [REF]),
    ("a branch that drops its query's views passes unnoticed (cosmic-ray)", "diffkit/denoise.py",
     "if branch.view[: len(query.view)] != query.view:", "if branch.view[: len(query.view)] < query.view:", [TECH]),
    ("RePaint resamples after the wrong steps for jump=3 (cosmic-ray)", "plugins/inpaint.py",
     "or (step.i + 1) % j:", "or (step.i - 1) % j:", [REF]),
    ("RePaint goes back one step too few", "plugins/inpaint.py",
     "lo = max(ctx.i_start, step.i + 1 - j)", "lo = max(ctx.i_start, step.i + 2 - j)", [REF]),
    ("inpaint pastes the original without noise", "plugins/inpaint.py",
     "if t < 0:\n            return self.x_orig", "if True:\n            return self.x_orig", [REF, TECH]),
    ("inpaint mask inverted", "plugins/inpaint.py",
     "return self.mask * x + (1 - self.mask) * self.known(ctx, t)",
     "return (1 - self.mask) * x + self.mask * self.known(ctx, t)", [REF, TECH]),
    ("sdedit reads strength as 1 - strength", "diffkit/backends/base.py",
     "return steps - min(int(steps * strength), steps)", "return steps - min(int(steps * (1 - strength)), steps)",
     [REF]),
    ("sdedit starts one step late", "plugins/sdedit.py",
     "return ctx.forward(self.x_orig, ctx.timesteps[i], noise), i",
     "return ctx.forward(self.x_orig, ctx.timesteps[i], noise), i + 1", [REF]),
    ("IF from_image loses the [0, 1] -> [-1, 1] mapping", "diffkit/backends/deepfloyd.py",
     "return (img * 2 - 1).to(self.device, self.dtype)", "return img.to(self.device, self.dtype)", [REF]),
    ("eval reports 1 - accuracy", "diffkit/mnist/evaluate.py",
     '{"accuracy": float((pred == labels).float().mean())', '{"accuracy": 1 - float((pred == labels).float().mean())',
     ["tests/test_mnist.py"]),
    ("eval zeroes the per-class accuracy", "diffkit/mnist/evaluate.py",
     "per_class = {int(k): float((pred[labels == k] == k).float().mean())", "per_class = {int(k): 0.0",
     ["tests/test_mnist.py"]),
    ("a step's noise drawn from one generator for all samples", "diffkit/state.py",
     "torch.randn((1, *shape), generator=g, dtype=dt) for g in gens",
     "torch.randn((1, *shape), generator=gens[0], dtype=dt) for g in gens", ["tests/test_sampler.py"]),
    # samplers (step rules)
    ("sigma-space rule stepped in the variance-preserving state", "diffkit/rules.py",
     "self.sigma_space = self.sigmas is not None and init != 1.0", "self.sigma_space = False", [SAMP, IFS]),
    ("sigma-space rule starts from unit noise", "diffkit/rules.py",
     "self.init_scale = init * math.sqrt(self.abars[0]) if self.sigma_space else 1.0", "self.init_scale = 1.0",
     [SAMP]),
    ("a stochastic rule draws one generator's noise for the whole batch", "diffkit/rules.py",
     'kwargs["generator"] = ctx.generators', 'kwargs["generator"] = ctx.generators[0]', [SAMP]),
    ("Heun makes one evaluation a step", "diffkit/rules.py",
     "return range(i * self.order, min((i + 1) * self.order, len(self.evals)))",
     "return range(i * self.order, i * self.order + 1)", [SAMP, IFS]),
    ("a rule's noise level is the training timestep's, not its own sigma", "diffkit/rules.py",
     "self.abars = [1 / (1 + v * v) for v in self.sigmas]",
     "self.abars = [schedule.abar_at(self.alphas_cumprod, round(t)) for t in self.timesteps] + [1.0]", [SAMP]),
    ("a start after step 0 does not tell the scheduler where it is", "diffkit/rules.py",
     "self.sched.set_begin_index(i_start * self.order)", "self.sched.set_begin_index(0)", [SAMP]),
    ("the variance goes to a rule that does not read it", "diffkit/rules.py",
     "self.uses_variance = cls.__name__ in USES_VARIANCE", "self.uses_variance = True", [IFS]),
    ("DDIM's eta is not passed to its step", "diffkit/rules.py",
     "return {k: self.args[k] for k in self.step_keys if self.args.get(k) is not None}",
     "return {}", [SAMP, IFS]),
    ("karras ignored", "diffkit/rules.py",
     'SIGMA_KEYS = {"karras": "use_karras_sigmas"', 'SIGMA_KEYS = {"karras_": "use_karras_sigmas"', [SAMP]),
    ("a flow model's clean-image estimates are not combined", "diffkit/denoise.py",
     "                if blocks > 1 and not (in_prediction or in_clean):", "                if False:", [FLOW]),
    ("apg's conditional and unconditional predictions swapped", "plugins/guiders.py",
     'return normalized_guidance(cond, uncond, self.args["scale"], buffer',
     'return normalized_guidance(uncond, cond, self.args["scale"], buffer', [GUIDE]),
    ("a guider combines a flow model's noise, not its velocity", "diffkit/denoise.py",
     '    in_prediction = combiner.space == "prediction"', '    in_prediction = False', [GUIDE]),
    ("APG's momentum carried from one batch into the next", "plugins/guiders.py",
     "        self.state: dict[tuple, Any] = {}", '        self.state = getattr(self, "state", {})', [GUIDE]),
    ("CFG-Zero*'s projection taken from the conditional prediction", "plugins/guiders.py",
     "        uncond = uncond * alpha\n", "        uncond = cond * alpha\n", [GUIDE]),
    ("a v-model's prediction made with the wrong sign", "diffkit/denoise.py",
     "return (est[:, :k] - math.sqrt(1 - a) * q.x[:, :k]) / math.sqrt(a)",
     "return (est[:, :k] + math.sqrt(1 - a) * q.x[:, :k]) / math.sqrt(a)", [GUIDE]),
    ("concealment's softmax over views instead of prompts", "diffkit/score.py",
     "return float(logits.softmax(dim=1).diagonal().mean())", "return float(logits.softmax(dim=0).diagonal().mean())",
     [SCORE]),
    ("alignment the mean view, not the worst", "diffkit/score.py",
     "return float(S.diagonal().min())", "return float(S.diagonal().mean())", [SCORE]),
    ("CLIP's temperature dropped", "diffkit/score.py",
     "return S, S * float(self.model.logit_scale.exp()), None", "return S, S, None", [SCORE]),
    ("a velocity's noise and clean image swapped", "diffkit/schedule.py",
     "return x + (1 - sigma) * v, x - sigma * v", "return x - sigma * v, x + (1 - sigma) * v", [FLOW]),
    ("the flow state is stepped unscaled", "diffkit/rules.py",
     "sample = x * schedule.flow_scale(self.sigmas[i])", "sample = x", [FLOW]),
    ("a flow rule's sigma is the timestep over T, not the scheduler's", "diffkit/rules.py",
     "return got if got is not None else float(t) / self.T", "return float(t) / 1000 * 0.999", [FLOW]),
    ("a flow img2img starts where Stable Diffusion's does", "diffkit/backends/base.py",
     "return int(max(steps - steps * strength, 0))", "return steps - min(int(steps * strength), steps)",
     ["tests/test_flux.py"]),
    ("a flow checkpoint's own scheduler shifted", "diffkit/backends/mnist.py",
     '"shift": 1.0}', '"shift": 2.0}', ["tests/test_shipped.py"]),
    ("a guidance term nested in cfg, not joined beside it", "diffkit/denoise.py",
     "        elif isinstance(c, GuidanceTerm) and last is not None and last.guidance:",
     "        elif False:", [PERT]),
    ("a joined term's sign inverted", "diffkit/denoise.py",
     "            out = out + term.weight(query) * (c - est)", "            out = out - term.weight(query) * (c - est)",
     [PERT]),
    ("a joined term guides from the unconditional branch", "diffkit/denoise.py",
     "        c = estimates[0]\n", "        c = estimates[1]\n", [PERT]),
    ("PAG's perturbed branch is the plain model", "diffkit/denoise.py",
     "            if perturbation is None:\n", "            if True:\n", [PERT]),
    ("PAG's identity attention only on the original half", "plugins/sd.py",
     "return self.processor(attn, *two, attention_mask, temb)[n:]",
     "return self.processor(attn, *two, attention_mask, temb)[:n]", [PERT]),
    ("SEG's infinite blur runs a finite kernel, as diffusers' copy", "plugins/sd.py",
     "    if sigma > inf_threshold:", "    if sigma <= inf_threshold:", [PERT]),
    ("SLG acts on every step", "plugins/perturbed.py",
     'return self.steps * self.args.get("start", 0.01) < i < self.steps * self.args.get("stop", 0.2)',
     "return True", [PERT]),
    ("SLG skips no block", "plugins/sd3.py",
     "        self.skip_layers = [int(p) for p in perturbation.layers]", "        self.skip_layers = None", [PERT]),
    ("PAG's adaptive scale ignored", "plugins/perturbed.py",
     "        if adaptive > 0 and scale > 0:", "        if False:", [PERT]),
    ("tcfg's conditional and unconditional predictions swapped", "plugins/guiders.py",
     'return normalized_guidance(cond, uncond, self.args["scale"], self.args["original"])',
     'return normalized_guidance(uncond, cond, self.args["scale"], self.args["original"])', [GUIDE]),
    ("mag raises the scale where the update is large", "plugins/guiders.py",
     "1.0 + (scale - 1.0) * torch.exp(-alpha * ratio)", "1.0 + (scale - 1.0) * torch.exp(alpha * ratio)", [GUIDE]),
    ("fdg's scales reversed (coarsest first)", "plugins/guiders.py",
     "build_laplacian_pyramid_func(uncond, levels), self.scales, weights):",
     "build_laplacian_pyramid_func(uncond, levels), self.scales[::-1], weights):", [GUIDE]),
    ("fdg's parallel part weighted as the orthogonal one", "plugins/guiders.py",
     "                shift = weight * parallel + orthogonal", "                shift = parallel + weight * orthogonal",
     [GUIDE]),
    ("reduction=x0: the views' clean images from the step's x0, never from the reduction's own average",
     "plugins/anagram.py", "        if len(mine) == 1:", "        if len(mine) == 99:", [GLASS]),
    ("reduction=x0: the views' states never step", "plugins/anagram.py",
     "            self.states = [self._move(z, c, self.at, t_next) for z, c in zip(self.states, cleans)]",
     "            self.states = self.states", [GLASS]),
    ("space=pixel: the views' clean latents viewed in the latent grid, not re-encoded", "plugins/anagram.py",
     "        return [be.from_pixels(im).to(x0.dtype) + self._seen(j, residual, own_lost[j])",
     "        return [self._seen(j, x0, own[j]) + 0 * self._seen(j, residual, own_lost[j])", [GLASS]),
    ("reduction=x0 on a flow model: the clean image weighted at the old sigma", "plugins/anagram.py",
     "            return (1 - s2) * x0 + s2 * ((z - (1 - s) * x0) / s)",
     "            return (1 - s) * x0 + s2 * ((z - (1 - s) * x0) / s)", [GLASS]),
    ("pyramid warping: the splat not divided by the count landed", "diffkit/warping.py",
     "        level = g[:, :c] / g[:, c:]  # 0 / 0 where nothing landed: NaN",
     "        level = g[:, :c] / g[:, c:].sign()", [GLASS]),
    ("pyramid warping: every view pixel reads the finest level", "diffkit/warping.py",
     "    lod = (LOD_SCALE * torch.log2(norm)).clamp(0, levels - 1)", "    lod = (0 * torch.log2(norm)).clamp(0, levels - 1)",
     [GLASS]),
    ("pyramid warping: holes left unfilled before the band is taken", "diffkit/warping.py",
     "            filled = _fill_nearest(level, missing)", "            filled = level.nan_to_num(0)", [GLASS]),
    ("pyramid blend: the detail-keeping average ignored", "diffkit/warping.py",
     "            mean = mean + detail * (weighted - mean)", "            mean = mean", [GLASS]),
    ("time travel: the views' states not noised back with the image's", "plugins/anagram.py",
     "            self.states = [low * self._renoise(z / hi, ratio, j, noise) for j, z in enumerate(self.states, 1)]",
     "            self.states = self.states", [GLASS]),
    ("time travel: a flow model's view states noised back as variance-preserving ones", "plugins/anagram.py",
     "[low * self._renoise(z / hi, ratio, j, noise) for", "[self._renoise(z, ratio, j, noise) for", [GLASS]),
    ("time travel: a view's state noised back with noise of its own, not the view of the image's",
     "plugins/anagram.py", "                noise = view.forward(noise)", "                noise = torch.randn_like(noise)",
     [GLASS]),
    ("time travel: the views' states left behind on the steps taken again", "plugins/anagram.py",
     "            self._advance(ts[m], ts[m + 1], out.x0)", "            self.blends.clear()", [GLASS]),
    ("time travel: one step less far back", "plugins/anagram.py",
     '        lo = max(ctx.i_start, i - self.args["travel"])', '        lo = max(ctx.i_start, i - self.args["travel"] + 1)',
     [GLASS]),
    ("time travel: the window starts a step late", "plugins/anagram.py",
     'int(n * a["travel_from"]) <= i <', 'int(n * a["travel_from"]) < i <', [GLASS]),
    ("flow Euler steps again from wherever the scheduler was", "diffkit/rules.py",
     "            s._step_index = i * self.order", "            pass", [GLASS]),
    ("time travel or RePaint allowed under the model's own multistep scheduler", "diffkit/api.py",
     "        if again is not None and not stepper.can_redo:", "        if False:", [GLASS]),
    ("Heun: the views' states left at the Euler predictor", "plugins/anagram.py",
     "        return predicted + scale2 * (s2 - s) * (slope_end - slope) / 2", "        return predicted", [GLASS]),
    ("Heun: the correction in the variance-preserving state, not the ODE's variables", "plugins/anagram.py",
     "        return predicted + scale2 * (s2 - s) * (slope_end - slope) / 2",
     "        return predicted + (s2 - s) * (slope_end - slope) / 2", [GLASS]),
    ("Heun: the views' second evaluation at their states from the step's start", "plugins/anagram.py",
     "self.mid = (t, cleans, [self._move(z, c, self.at, t) for z, c in zip(self.states, cleans)])",
     "self.mid = (t, cleans, list(self.states))", [GLASS]),
    ("a rule that declares it cannot step again let through before the weights load", "diffkit/request.py",
     "        if self.rule.redoes(formulation) is False:", "        if False:", [GLASS, SAMP]),
]


def run(mutation: tuple) -> tuple[str, float]:
    name, path, old, new, tests = mutation
    file = ROOT / path
    source = file.read_text()
    if source.count(old) != 1:
        return f"STALE (the text to mutate is not in {path} exactly once)", 0.0
    t0 = time.perf_counter()
    try:
        file.write_text(source.replace(old, new))
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                           cwd=ROOT, capture_output=True, text=True)
    finally:
        file.write_text(source)
    return ("KILLED" if r.returncode == 1 else f"SURVIVED (pytest exit {r.returncode})"), time.perf_counter() - t0


def commit() -> str:
    """The commit the mutations ran on (``+uncommitted`` when tracked files differ from it)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return head + ("+uncommitted" if dirty else "")


def stale() -> list[str]:
    """The mutations whose text is not in their file exactly once: they would test nothing."""
    return [f"{m[0]} ({m[1]})" for m in MUTATIONS if (ROOT / m[1]).read_text().count(m[2]) != 1]


def main() -> int:
    import signal

    # SIGTERM (a killed job) unwinds like Ctrl-C, so run()'s finally restores the mutated file
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    chosen = [m for m in MUTATIONS if not sys.argv[1:] or any(a in m[0] for a in sys.argv[1:])]
    if stale():  # a mutation of text that is gone would read as a pass; the whole run fails first
        print("STALE (fix their text first):\n  " + "\n  ".join(stale()))
        return 1
    measured_on = commit()  # before any mutation touches a file
    bad, rows = 0, []
    for m in chosen:
        verdict, seconds = run(m)
        bad += not verdict.startswith("KILLED")
        rows.append({"mutation": m[0], "file": m[1], "tests": m[4], "verdict": verdict, "seconds": seconds})
        print(f"{verdict:<10} {seconds:5.1f} s  {m[0]}  ({m[1]})", flush=True)
    print(f"{len(chosen) - bad} of {len(chosen)} killed")
    if not sys.argv[1:]:  # the whole list: the session's summary, as docs/testing.md quotes it
        out = ROOT / "benchmarks" / "results" / "mutations.json"
        out.write_text(json.dumps({"commit": measured_on, "date": time.strftime("%Y-%m-%d"), "mutations": len(chosen),
                                   "killed": len(chosen) - bad, "rows": rows}, indent=2) + "\n")
        print(f"stored in {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
