"""Built-in samplers (step rules), named as ComfyUI's KSampler names them; all but ddpm are diffusers'."""

from __future__ import annotations

from typing import Any, Sequence

from diffkit.hookspecs import hookimpl
from diffkit.rules import (FLOW_SOLVER, SIGMA_KEYS, SIGMA_PARAMS, SPACING_PARAM, Ddpm, DiffusersRule, Generic, RuleError,
                           Stepper, check_sigma_spacing)
from diffkit.params import Param

SPACING_KEYS = {"spacing": "timestep_spacing"}
FLOW = FLOW_SOLVER  # a solver's flow variant: flow sigmas (the model's shift) and velocity predictions


class SigmaRule(DiffusersRule):
    """A diffusers scheduler with diffusers' sigma spacings (karras, exponential, beta) and timestep spacing."""

    params = (*SIGMA_PARAMS, SPACING_PARAM)
    config_keys = SIGMA_KEYS

    def __init__(self, **args: Any):
        super().__init__(**args)
        check_sigma_spacing(self.name, args)


class Ddim(DiffusersRule):
    name = "ddim"
    help = "DDIM (Song et al. 2021): deterministic at eta=0, DDPM-like noise at eta=1."
    scheduler = "DDIMScheduler"
    params = (Param("eta", float, 0.0, "noise of each step: 0 deterministic, 1 as DDPM", range=(0.0, 1.0)),
              SPACING_PARAM)
    config_keys = SPACING_KEYS
    step_keys = ("eta",)


class Euler(SigmaRule):
    name = "euler"
    help = "Euler's method on the probability-flow ODE in sigma space (Karras et al. 2022, alg. 1). Deterministic."
    scheduler = "EulerDiscreteScheduler"
    flow_scheduler = "FlowMatchEulerDiscreteScheduler"  # on a flow model: x += (sigma' - sigma) v


class EulerAncestral(DiffusersRule):
    name = "euler_ancestral"
    help = "Euler step to a lower sigma, then fresh noise back up (k-diffusion's ancestral sampling). Stochastic."
    scheduler = "EulerAncestralDiscreteScheduler"
    params = (SPACING_PARAM,)
    config_keys = SPACING_KEYS


class Heun(SigmaRule):
    name = "heun"
    help = "Heun's second-order method (Karras et al. 2022, alg. 1): two model evaluations a step."
    scheduler = "HeunDiscreteScheduler"
    flow_scheduler = "FlowMatchHeunDiscreteScheduler"


class DpmPP2M(SigmaRule):
    name = "dpmpp_2m"
    help = "DPM-Solver++(2M) (Lu et al. 2022): second-order multistep on x0 predictions. Deterministic."
    scheduler = "DPMSolverMultistepScheduler"
    fixed = {"algorithm_type": "dpmsolver++", "solver_order": 2}
    flow_scheduler = "DPMSolverMultistepScheduler"
    flow_fixed = {**fixed, **FLOW}


class DpmPP2MSde(DpmPP2M):
    name = "dpmpp_2m_sde"
    help = "SDE variant of DPM-Solver++(2M): fresh noise every step. Stochastic."
    fixed = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
    flow_fixed = {**fixed, **FLOW}


class UniPC(SigmaRule):
    name = "uni_pc"
    help = "UniPC (Zhao et al. 2023): multistep predictor with a corrector that reuses the next evaluation."
    scheduler = "UniPCMultistepScheduler"
    flow_scheduler = "UniPCMultistepScheduler"
    flow_fixed = FLOW


class Deis(SigmaRule):
    name = "deis"
    help = "DEIS (Zhang & Chen 2023): exponential-integrator multistep solver. Deterministic."
    scheduler = "DEISMultistepScheduler"
    flow_scheduler = "DEISMultistepScheduler"
    flow_fixed = FLOW


class Own(DiffusersRule):
    name = "own"
    help = ("The model's own scheduler: the diffusers class its scheduler config names, with that config, as "
            "the model's pipeline runs it (Stable Diffusion: PNDM or DDIM or Euler, whichever it ships; SD3 and "
            "Flux: flow-matching Euler with their shift).")

    formulations = ("vp", "flow")

    def plan(self, backend: Any, steps: int | None = None, timesteps: Sequence[int] | None = None,
             stride: int | None = None) -> Stepper:
        config = backend.scheduler_config or {}
        if not config.get("_class_name"):
            raise RuleError(f"rule 'own': backend {backend.name!r} ships no scheduler of its own; give "
                            "--rule (see `diffkit rules`)")
        self.scheduler = self.flow_scheduler = config["_class_name"]  # SD3, Flux: FlowMatchEulerDiscreteScheduler
        return super().plan(backend, steps, timesteps, stride)

    def redoes(self, formulation: str) -> bool | None:
        return None  # the model's scheduler config says, once it is read


@hookimpl
def diffkit_samplers():
    return [Ddpm, Ddim, Euler, EulerAncestral, Heun, DpmPP2M, DpmPP2MSde, UniPC, Deis, Own, Generic]
