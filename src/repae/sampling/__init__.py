"""Sampling: solvers with one signature, classifier-free guidance, and the generation pipeline.

- :mod:`repae.sampling.solvers`: ``euler``, ``heun`` (ODE) and ``euler_maruyama`` (SDE), all called
  as ``solver(velocity_fn, x, *, num_steps, generator=None, progress=False, **kw)``.
- :mod:`repae.sampling.guidance`: ``guided_velocity`` (CFG with a guidance interval).
- :mod:`repae.sampling.generator`: ``Generator`` (labels + seeds -> images) and the per-index seeds/labels.
- :mod:`repae.sampling.outputs`: ``sample_to_outputs`` (PNG folder / ADM npz, several ranks).
- the ``repae sample`` verb is :mod:`repae.cli.sample`.
"""

from repae.sampling.generator import Generator, sample_labels, sample_seed, sample_seeds
from repae.sampling.guidance import guidance_active, guided_velocity, model_velocity_fn
from repae.sampling.outputs import SampleOutputs, sample_to_outputs, shard_indices, write_adm_npz
from repae.sampling.solvers import SOLVERS, euler, euler_maruyama, get_solver, heun

__all__ = [
    "SOLVERS",
    "Generator",
    "SampleOutputs",
    "euler",
    "euler_maruyama",
    "get_solver",
    "guidance_active",
    "guided_velocity",
    "heun",
    "model_velocity_fn",
    "sample_labels",
    "sample_seed",
    "sample_seeds",
    "sample_to_outputs",
    "shard_indices",
    "write_adm_npz",
]
