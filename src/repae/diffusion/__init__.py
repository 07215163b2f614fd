"""Flow-matching objective: interpolation paths, time samplers and the noised-batch draw.

Convention (REPA / REPA-E): t = 0 is data, t = 1 is noise; see :mod:`repae.conventions`.
"""

from repae.diffusion.objective import FlowMatching, NoisedBatch, per_sample_mse
from repae.diffusion.paths import PATHS, CosinePath, LinearPath, Path, PathCoefficients, get_path
from repae.diffusion.timesteps import TIME_SAMPLERS, LogNormalTime, TimeSampler, UniformTime, get_time_sampler

__all__ = [
    "FlowMatching",
    "NoisedBatch",
    "per_sample_mse",
    "PATHS",
    "Path",
    "PathCoefficients",
    "LinearPath",
    "CosinePath",
    "get_path",
    "TIME_SAMPLERS",
    "TimeSampler",
    "UniformTime",
    "LogNormalTime",
    "get_time_sampler",
]
