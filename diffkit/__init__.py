"""diffkit: compose diffusion sampling techniques as plugins, batched into one model call a step."""

from diffkit.api import Result, Run, load_backend, sample, save
from diffkit.sampler import Sampler

__all__ = ["Result", "Run", "Sampler", "load_backend", "sample", "save"]
__version__ = "0.1.0"
