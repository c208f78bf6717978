"""What a run is asked to do, typed and checked once: :class:`RunRequest`.

Every frontend builds one (the command line from its flags, the UI from its page, the Python API from
keywords, a sweep for each value, each torchrun rank the same) and the engine (:class:`diffkit.api.Run`)
consumes it; nothing downstream re-reads a flag or a dict. It is written into run.json (``"request"``)
and read back without loss, so ``diffkit sample --from RUN/run.json`` repeats a recorded run to the same
bytes, and it is what a ``--resume`` compares::

    req = RunRequest(backend="mnist", labels=(3, 7), num=4, techniques=("cfg:5",))  # backend=None: the default
    diffkit.api.sample(request=req)
    RunRequest.from_json(req.to_json()).to_json() == req.to_json()
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from diffkit import registry
from diffkit.backends.base import Backend, check_device
from diffkit.errors import UserError
from diffkit.rules import StepRule, check_timesteps
from diffkit.sampler import MAX_BRANCHES
from diffkit.technique import FILE_KINDS, Technique

# Every bound of a request, in this one place (the command line's flags declare these same ranges).
SEED_MAX = 2**63 - 1  # each sample's seed (seed + i) must fit torch's 64-bit generator seed
NUM_MAX = 100_000  # samples per label
BRANCHES_MAX = 2**30


class RequestError(UserError, ValueError):
    """A request that cannot be run as given; the message names the field."""


# The largest run.json `--from` reads: its samples list grows with the run (about 60 bytes a sample), so
# this is a run of about two million samples; a file past it (or /dev/zero, a pipe) is refused unread.
MAX_RECORD = 128 << 20


def read_recorded(source: str | os.PathLike) -> dict[str, Any]:
    """The request a run recorded: run.json's (or an interrupted run's request.json's) ``"request"``, from the
    file or from the run folder holding it. Judged by ``stat`` before it is opened: a device, a pipe, a
    folder without run.json or a file over :data:`MAX_RECORD` is a RequestError (saying what is wrong with
    the file, whose path the caller names), never read."""
    path = os.path.join(source, "run.json") if os.path.isdir(source) else os.fspath(source)
    try:
        st = os.stat(path)
    except OSError as e:
        raise RequestError(e.strerror or str(e)) from None
    if not stat.S_ISREG(st.st_mode):
        raise RequestError("not a regular file (a device, a pipe or a socket): give a run.json")
    if st.st_size > MAX_RECORD:
        raise RequestError(f"{st.st_size} bytes, more than a run.json diffkit writes for a run it can repeat "
                           f"({MAX_RECORD} at most)")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(MAX_RECORD + 1))
    except OSError as e:
        raise RequestError(e.strerror or str(e)) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise RequestError(f"not a run.json diffkit wrote ({e})") from None
    if not isinstance(data, dict) or "request" not in data:
        raise RequestError("it records no request (a run.json written before diffkit recorded requests, or not "
                           "a run's)")
    return data["request"]


def check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    """Refuse (RequestError naming ``name`` and its range) anything but an integer in ``lo..hi``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise RequestError(f"{name} must be an integer in {lo}..{'' if hi is None else hi}, got {value!r}")


# The fields run.json's "request" holds, in the order it writes them (the bytes of run.json files written
# before this class existed stay the same).
RECORDED = ("labels", "num", "seed", "steps", "stride", "timesteps", "timesteps2", "i_start", "save_every",
            "stages", "backend", "backend_options", "hooks", "sampler", "inputs")


@dataclass(frozen=True, eq=False)
class RunRequest:
    """One run, as asked. Fields given as text (technique specs, a step rule spec, option values as the
    command line spells them) are read on construction; every bound is checked there, so a request that
    exists is one that can run (short of what only the model can say: a label it cannot encode)."""

    backend: str | Backend | None = None  # an installed backend's name (or, from Python, a built Backend); None:
    # the installed default (registry.default_backend(): diffkit's mnist)
    options: Mapping[str, Any] = field(default_factory=dict)  # the backend's declared options, read
    labels: tuple[Any, ...] = (None,)  # prompts or classes, one a group of ``num`` samples; None: unconditional
    num: int = 1  # samples per label
    seed: int = 0  # sample i's seed is seed + i
    techniques: tuple[Technique, ...] = ()  # first is outermost; specs ("cfg:5") are read into techniques
    rule: StepRule | None = None  # the step rule (a spec is read); None: the backend's default
    steps: int | None = None
    stride: int | None = None
    timesteps: tuple[int, ...] | None = None
    timesteps2: tuple[int, ...] | None = None  # a second stage's (IF II)
    i_start: int = 0
    save_every: int = 0  # keep every K-th step's x0 estimate as frames (0: none)
    stages: int | None = None  # stop after this many stages (None: as many as the backend chains)
    # Recorded files' contents ("path": "sha256:..."): from run.json, the run refuses files that changed.
    inputs: Mapping[str, str] | None = None
    # How the work is split: never a sample's bytes, so neither recorded nor compared by a --resume.
    batch_size: int | None = None
    max_batch: int | None = None
    max_branches: int = MAX_BRANCHES

    def __post_init__(self) -> None:
        self._check(None)

    def _check(self, changed: set[str] | None) -> None:
        """Read and check the fields (``changed``: only those a :meth:`replace` changed need reading again;
        the cheap bounds are checked every time, since they depend on each other)."""
        def again(*names: str) -> bool:
            return changed is None or any(n in changed for n in names)

        set_ = object.__setattr__.__get__(self)  # frozen: the constructor's own normalisation only
        if self.backend is None:
            set_("backend", registry.default_backend())
        check_int("seed", self.seed, 0, SEED_MAX)
        check_int("num", self.num, 1, NUM_MAX)
        for name in ("steps", "stride", "max_batch", "batch_size", "stages"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        check_int("i_start", self.i_start, 0)
        check_int("save_every", self.save_every, 0)
        check_int("max_branches", self.max_branches, 1, BRANCHES_MAX)
        for name in ("timesteps", "timesteps2"):
            ts = getattr(self, name)
            if ts is not None:
                if isinstance(ts, (str, bytes)) or not isinstance(ts, Sequence):
                    raise RequestError(f"{name} must be a list of integers, got {ts!r}")
                check_timesteps(name, ts)
                set_(name, tuple(ts))
        if self.timesteps is not None and self.steps is not None and self.steps != len(self.timesteps):
            raise RequestError(f"steps={self.steps} contradicts the {len(self.timesteps)} timesteps given: give "
                               "steps or timesteps, not both")
        labels = self.labels
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence) or not labels:
            raise RequestError(f"labels must be a non-empty list (prompts or classes; [None]: none), got {labels!r}")
        set_("labels", tuple(labels))
        check_int("seed + number of samples", self.seed + self.n - 1, 0, SEED_MAX)
        if again("techniques"):
            techniques = tuple(registry.make_technique(t) if isinstance(t, str) else t for t in self.techniques)
            for t in techniques:
                if not isinstance(t, Technique):
                    raise RequestError(f"techniques must be specs (\"cfg:5\") or Technique instances, got {t!r}")
            registry.check_together(list(techniques))
            set_("techniques", techniques)
        if isinstance(self.rule, str):
            set_("rule", registry.make_sampler(self.rule))
        if again("backend", "options"):
            set_("options", self._read_options())
        if again("backend", "options", "rule") and self.rule is not None:
            self._check_formulation()
        if again("backend", "options", "rule", "techniques") and self.rule is not None:
            self._check_redo()
            self._check_evaluations()
        if again("backend", "techniques") and isinstance(self.backend, str):
            self._check_perturbations()
            self._check_decoder()
        if again("backend", "options", "techniques", "stages") and isinstance(self.backend, str):
            self._check_conditioned()
        if self.inputs is not None:
            set_("inputs", dict(self.inputs))

    def _read_options(self) -> dict[str, Any]:
        """The options read against the backend's declarations, in declared order whatever order they were
        given in (one request, one run.json), the device checked."""
        if not isinstance(self.backend, str):
            if self.options:
                raise RequestError("options are for a backend given by name; a built Backend has its own")
            return {}
        info = registry.get_backend(self.backend)
        typed = info.read_options(dict(self.options))
        options = {p.name: typed[p.name] for p in info.params if p.name in typed}
        if "device" in options:
            check_device(str(options["device"]))
        return options

    def _check_perturbations(self) -> None:
        """A technique that perturbs the model (pag, seg, slg) on a backend that does not declare that
        perturbation (``BackendInfo.perturbations``) is refused by name before its weights load."""
        have = registry.get_backend(self.backend).perturbations
        for t in self.techniques:
            need = getattr(t, "perturbs", None)
            if need and need not in have:
                takers = sorted(n for n, b in registry.backends().items() if need in b.perturbations)
                raise RequestError(f"technique {t.name!r} perturbs the model's forward pass ({need}), which backend "
                                   f"{self.backend!r} cannot; backends that can: {', '.join(takers) or 'none installed'}")

    def _check_decoder(self) -> None:
        """A technique that acts on the decoded image (``Technique.needs_decoder``: anagram's space=pixel) on a
        backend whose state is no VAE's latents (``BackendInfo.latent``) is refused by name before its
        weights load."""
        if registry.get_backend(self.backend).latent:
            return
        for t in self.techniques:
            if t.needs_decoder:
                takers = sorted(n for n, b in registry.backends().items() if b.latent)
                raise RequestError(f"technique {t.name!r} acts on the decoded image (space=pixel), but backend "
                                   f"{self.backend!r} samples in pixel space already: drop space=pixel there (latent "
                                   f"backends: {', '.join(takers) or 'none installed'})")

    def _check_conditioned(self) -> None:
        """A technique that can only view the state (``Technique.state_input_only``) on a stage whose model
        takes an image beside it (``BackendInfo.conditioned_from``) is refused by name before any weights load."""
        info = registry.get_backend(self.backend)
        first = info.conditioned_from(self.options) if info.conditioned_from else None
        if first is None or (self.stages is not None and self.stages < first):
            return
        for t in self.techniques:
            if t.state_input_only:
                raise RequestError(f"technique {t.name!r} can view only the state, but from stage {first} backend "
                                   f"{self.backend!r}'s model takes an image beside it, which the view cannot carry; "
                                   f"run only the stages before it (the backend's option that drops stage {first}, "
                                   f"`diffkit backends`; Python API: stages={first - 1}) or use a permutation view")

    def _formulation(self) -> tuple[str, str]:
        """The backend's name and formulation, from its declaration when it is given by name."""
        if isinstance(self.backend, str):
            return self.backend, registry.get_backend(self.backend).formulation_of(self.options)
        return self.backend.name, self.backend.formulation

    def _check_redo(self) -> None:
        """A technique that steps again from earlier states (``Technique.steps_again``: time travel, RePaint's
        resampling) under a rule that keeps a history is refused by name before any weights load, where the
        rule declares it (``StepRule.redoes``; the model's own scheduler is known at setup)."""
        wanting = [t for t in self.techniques if t.steps_again]
        if not wanting:
            return
        backend, formulation = self._formulation()
        if self.rule.redoes(formulation) is False:
            able = {n: _redoes(r, formulation) for n, r in registry.samplers().items() if formulation in r.formulations}
            takers = sorted(n for n, v in able.items() if v) + [f"{n} where the model's scheduler has none"
                                                                 for n, v in sorted(able.items()) if v is None]
            t = wanting[0]
            raise RequestError(f"technique {t.name!r} ({t.steps_again}) steps again from re-noised states, which rule "
                               f"{self.rule.name!r} cannot on backend {backend!r}: it keeps a position or earlier "
                               f"estimates. Use a rule without a history ({', '.join(takers)}), or drop "
                               f"{t.steps_again.split('=')[0]}")

    def _check_evaluations(self) -> None:
        """A technique whose combined clean image differs from the state even where its branches agree
        (``Technique.inexact_average``: anagram's warps) under a rule that evaluates the model twice a step
        (Heun) is refused by name before any weights load, where the rule's scheduler class says so (the
        model's own scheduler is known at setup, where the technique refuses it)."""
        wanting = [t for t in self.techniques if t.inexact_average]
        if not wanting:
            return
        _, formulation = self._formulation()
        if (evaluations(self.rule, formulation) or 1) > 1:
            t, rule = wanting[0], self.rule
            what = f"rule {rule.name!r}" + (f" ({rule.scheduler})" if rule.name == "diffusers" else "")
            raise RequestError(twice_a_step(t.name, t.inexact_average, what, formulation))

    def _check_formulation(self) -> None:
        """A rule that cannot step the backend's kind of model (ddpm on a flow model) is refused by name,
        from the backend's declaration, before its weights load."""
        name, formulation = self._formulation()
        takers = sorted(n for n, r in registry.samplers().items() if formulation in r.formulations)
        self.rule.check_formulation(name, formulation, takers)
        # a rule only some flow schedules suit: the model's schedule, read before its weights where declared
        if (formulation == "flow" and isinstance(self.backend, str) and hasattr(self.rule, "check_schedule")
                and not self.rule.follows_any_schedule()):
            info = registry.get_backend(self.backend)
            if info.scheduler_of is not None:
                try:
                    config = info.scheduler_of(self.options)
                except UserError:
                    return  # an unreadable model is the load's to report, with its own words
                if config is not None:
                    self.rule.check_schedule(name, config)

    # ---- what follows from it ----

    @property
    def n(self) -> int:
        """Samples in the run: ``num`` of each label."""
        return len(self.labels) * self.num

    def sample_labels(self) -> list[Any]:
        """Sample i's label: each label ``num`` times, in order."""
        return [lab for lab in self.labels for _ in range(self.num)]

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n)]

    @property
    def backend_name(self) -> str:
        return self.backend if isinstance(self.backend, str) else self.backend.name

    def replace(self, **changes: Any) -> RunRequest:
        """A copy with ``changes``, checked as a new request is (what did not change was read already)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"RunRequest has no field {unknown[0]!r}")
        new = object.__new__(RunRequest)
        for f in dataclasses.fields(self):
            object.__setattr__(new, f.name, changes.get(f.name, getattr(self, f.name)))
        new._check(set(changes))
        return new

    def load_backend(self) -> Backend:
        """The backend, built from its options (read once, on construction); a built one as it is."""
        if not isinstance(self.backend, str):
            return self.backend
        return registry.get_backend(self.backend).load(**self.options)

    def files(self) -> list[str]:
        """Every file the run reads: techniques' images, masks and permutation files, and a backend's file
        options such as IF's embeddings (not model folders)."""
        files = [f for t in self.techniques for f in t.input_files()]
        if isinstance(self.backend, str):
            for p in registry.get_backend(self.backend).params:
                v = self.options.get(p.name)
                if p.kind in FILE_KINDS and isinstance(v, str) and os.path.isfile(v):
                    files.append(v)
        return list(dict.fromkeys(files))

    def hash_inputs(self) -> RunRequest:
        """This request with ``inputs`` set to the files' contents now; a request that recorded other
        contents (a shared run.json whose image has since changed) is refused naming the file, since its
        samples could not be the recorded ones."""
        now = {}
        for f in self.files():
            h = hashlib.sha256()
            with open(f, "rb") as fp:
                for block in iter(lambda: fp.read(1 << 20), b""):
                    h.update(block)
            now[f] = "sha256:" + h.hexdigest()
        if self.inputs is not None:
            for f, digest in self.inputs.items():
                if f not in now:
                    raise RequestError(f"inputs: the recorded run read {f}, which this request does not (or which "
                                       "is gone); the samples would differ")
                if now[f] != digest:
                    raise RequestError(f"inputs: {f} has changed since the run was recorded ({digest}, now "
                                       f"{now[f]}); the samples would differ: restore the file")
        return self.replace(inputs=now)

    # ---- run.json ----

    def to_json(self) -> dict[str, Any]:
        """What run.json records as ``request``: everything that decides the samples' bytes (not how the
        work is split). ``inputs`` only when the run reads files."""
        options = dict(self.options)
        if str(options.get("device", "")).startswith("cuda:"):  # torchrun gives each rank its own GPU
            options["device"] = "cuda"
        out = {"labels": list(self.labels), "num": self.num, "seed": self.seed, "steps": self.steps,
               "stride": self.stride, "timesteps": list(self.timesteps) if self.timesteps else None,
               "timesteps2": list(self.timesteps2) if self.timesteps2 else None, "i_start": self.i_start,
               "save_every": self.save_every, "stages": self.stages, "backend": self.backend_name,
               "backend_options": options, "hooks": [{"name": t.name, "args": t.args} for t in self.techniques],
               "sampler": self.rule.spec if self.rule is not None else None}
        if self.inputs:
            out["inputs"] = dict(self.inputs)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], **work: Any) -> RunRequest:
        """The request a run recorded (run.json's ``request``, an interrupted run's request.json), with
        ``work`` (batch_size, max_batch, max_branches) as this run splits it. A field this diffkit does
        not know, or one missing, is a RequestError naming it: such a run.json came from another diffkit
        version and cannot be honoured as it was recorded."""
        if not isinstance(data, Mapping):
            raise RequestError(f"the recorded request is not an object: {type(data).__name__}")
        unknown = [k for k in data if k not in RECORDED]
        if unknown:
            raise RequestError(f"the recorded request has field {unknown[0]!r}, which this diffkit does not know: "
                               "it was written by another diffkit version and cannot be honoured as recorded")
        missing = [k for k in RECORDED if k != "inputs" and k not in data]
        if missing:
            raise RequestError(f"the recorded request lacks field {missing[0]!r}: it was not written by this "
                               "diffkit version")
        hooks = data["hooks"]
        if not isinstance(hooks, list) or not all(isinstance(h, Mapping) and set(h) == {"name", "args"}
                                                   and isinstance(h["args"], Mapping) for h in hooks):
            raise RequestError("field 'hooks' must be a list of {name, args} objects")
        rule = data["sampler"]
        if rule is not None and not (isinstance(rule, Mapping) and isinstance(rule.get("spec"), str)):
            raise RequestError("field 'sampler' must be {name, args, spec}")
        if not isinstance(data["backend"], str):
            raise RequestError(f"field 'backend' must be a backend's name, got {data['backend']!r}")
        if not isinstance(data["backend_options"], Mapping):
            raise RequestError("field 'backend_options' must be an object")
        return cls(
            backend=data["backend"], options=data["backend_options"], labels=data["labels"], num=data["num"],
            seed=data["seed"], techniques=tuple(registry.technique_from(h["name"], dict(h["args"])) for h in hooks),
            rule=rule["spec"] if rule is not None else None, steps=data["steps"], stride=data["stride"],
            timesteps=data["timesteps"], timesteps2=data["timesteps2"], i_start=data["i_start"],
            save_every=data["save_every"], stages=data["stages"], inputs=data.get("inputs"), **work)

    @classmethod
    def of(cls, backend: str | Backend | None = None, *, prompts: Sequence[str] | None = None,
           classes: Sequence[int | str] | None = None, hooks: Sequence[str | Technique] = (),
           sampler: str | StepRule | None = None, backend_options: Mapping[str, Any] | None = None,
           **fields: Any) -> RunRequest:
        """A request from the Python API's keywords (``prompts``/``classes``, ``backend_options``, and
        ``hooks``/``sampler``, the old names of the fields ``techniques``/``rule``; the rest are fields):
        ``RunRequest.of("mnist", classes=[3], techniques=["cfg:5"], rule="ddim")``."""
        if prompts and classes:
            raise RequestError("give prompts or classes, not both")
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
        # hooks= and sampler= are the old names of techniques= and rule=: either, not both
        for old, new, value in (("hooks", "techniques", hooks), ("sampler", "rule", sampler)):
            if value and fields.get(new):
                raise TypeError(f"give {new}= or its old name {old}=, not both")
        fields["techniques"] = tuple(fields.get("techniques") or hooks)
        if fields.get("rule") is None:
            fields["rule"] = sampler
        if fields.get("max_branches") is None:
            fields.pop("max_branches", None)
        return cls(backend=backend, options={k: v for k, v in (backend_options or {}).items() if v is not None},
                   labels=tuple(prompts or classes or (None,)), **fields)


def evaluations(rule: StepRule, formulation: str) -> int | None:
    """How many times rule ``rule`` evaluates the model a step on a model of ``formulation``: its diffusers
    scheduler class's ``order``, as its walk reads it (``DiffusersStepper.order``), known before any weights
    load; None where only its plan says (the model's own scheduler; ddpm, once)."""
    import diffusers

    name = getattr(rule, "flow_scheduler" if formulation == "flow" else "scheduler", None)
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    return int(getattr(cls, "order", 1)) if cls is not None else None


def twice_a_step(technique: str, argument: str, rule: str, formulation: str) -> str:
    """Why ``technique`` with ``argument`` (``Technique.inexact_average``) cannot run under ``rule`` (as
    said: "rule 'heun'"), which evaluates the model twice a step, and the rules that can."""
    once = sorted(n for n, r in registry.samplers().items()
                  if formulation in r.formulations and _once(r, formulation))
    return (f"technique {technique!r} ({argument}) gives a clean image that differs a little from the state even "
            f"where its branches agree, and {rule} evaluates the model a second time within each step and divides "
            "by that evaluation's sigma, small on the last step, so the difference grows into the image. Use a rule "
            f"that evaluates once a step ({', '.join(once)}); docs/illusions.md, 'Heun and the warps'")


def _once(rule: type, formulation: str) -> bool:
    try:
        return evaluations(rule(), formulation) == 1
    except Exception:  # a rule needing arguments (diffusers:CLASS)
        return False


def _redoes(rule: type, formulation: str) -> bool | None:
    """Whether rule class ``rule`` with its defaults declares it can step again (None: its plan says; one
    needing arguments: no)."""
    try:
        return rule().redoes(formulation)
    except Exception:
        return False
