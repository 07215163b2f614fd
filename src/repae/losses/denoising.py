"""Denoising (flow-matching) loss: per-sample mean squared velocity error, fp32 (spec 2.8 step 8).

The single implementation lives in :mod:`repae.diffusion.objective` (``FlowMatching.loss`` uses it);
it is re-exported here so all loss terms can be imported from :mod:`repae.losses`.
"""

from repae.diffusion.objective import per_sample_mse

denoising_loss = per_sample_mse  # [B, C, h, w], [B, C, h, w] -> [B]

__all__ = ["per_sample_mse", "denoising_loss"]
