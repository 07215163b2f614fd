"""CKNNA (Centered Kernel Nearest-Neighbour Alignment, Huh et al. 2024) and per-layer SiT curves.

Definition (spec-related-methods.md 4.1, as in the platonic-representation code): for features
``A [n, dA]`` and ``B [n, dB]`` of the same ``n`` samples,

1. clip outliers: every entry is clamped to ``[-q, q]`` with ``q`` the 0.95 quantile of ``|A|``
   (exact mode: entry ``int(0.95 N)`` (0-based) of all ``N`` sorted ``|entries|``; ``"row"`` mode: the
   per-row 0.95 quantile averaged over rows), then L2-normalise every row;
2. linear kernels ``K = A A^T``, ``L = B B^T`` ``[n, n]`` (cosine similarities);
3. row-wise kNN masks ``M_K[i, j] = 1`` iff ``j != i`` is among the ``k`` most similar to ``i``
   in ``K`` (not symmetrised); same for ``M_L``; mutual mask ``M = M_K * M_L``;
4. ``CKNNA = HSIC_u(M K, M L) / (sqrt(HSIC_u(M_K K, M_K K) HSIC_u(M_L L, M_L L)) + 1e-6)``,
   with the unbiased HSIC of Song et al. (2012) of :func:`hsic_unbiased`.

``k = 10`` as reported by REPA / REPA-E. Values depend on ``n`` and ``k``: always report both.

How REPA / REPA-E use it (spec 4.2): SiT hidden state after block ``l`` on the *noised* latent at
a fixed ``t`` with the correct label vs the frozen encoder's features of the *clean* image, both
averaged over tokens. :func:`collect_alignment_features` gathers those features for every block in
one pass (forward hooks on the SiT blocks; :mod:`repae.models.sit` is not modified) and
:func:`layerwise_cknna` turns them into a per-layer curve.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from repae.errors import ConfigError

__all__ = [
    "remove_outliers", "prepare_features", "knn_mask", "hsic_unbiased", "cknna",
    "sit_hidden_states", "AlignmentFeatures", "collect_alignment_features", "LayerwiseCKNNA", "layerwise_cknna",
]

TOPK = 10  # REPA / REPA-E report CKNNA with k = 10 (spec 4.1)
OUTLIER_Q = 0.95  # platonic measure_alignment.py clipping quantile


# ---------------------------------------------------------------------------------------------
# The metric
# ---------------------------------------------------------------------------------------------


def remove_outliers(feats: Tensor, q: float = OUTLIER_Q, *, mode: str = "exact") -> Tensor:
    """Clamp ``feats [n, d]`` to ``[-t, t]``, ``t`` = the ``q`` quantile of ``|feats|`` (spec 4.1 step 1)."""
    a = feats.abs()
    if mode == "exact":  # global sort of all entries; index int(q N) (clamped to the last entry)
        flat = a.flatten().sort().values  # [N]
        t = flat[min(int(q * flat.numel()), flat.numel() - 1)]
    elif mode == "row":  # approximate mode: per-row quantile, averaged over rows
        t = torch.quantile(a.float(), q, dim=1).mean().to(a.dtype)
    else:
        raise ConfigError(f"unknown outlier mode {mode!r}; use 'exact' or 'row'")
    return feats.clamp(-t, t)


def prepare_features(feats: Tensor, q: float | None = OUTLIER_Q, *, mode: str = "exact") -> Tensor:
    """Outlier clipping (skipped if ``q is None``) then row-wise L2 normalisation ``[n, d]``."""
    if feats.ndim != 2:
        raise ConfigError(f"CKNNA features must be [n, d], got shape {tuple(feats.shape)}; pool or flatten tokens")
    x = feats if q is None else remove_outliers(feats, q, mode=mode)
    return F.normalize(x, dim=1)  # [n, d]


def knn_mask(K: Tensor, k: int) -> Tensor:
    """Row-wise kNN mask of a kernel ``K [n, n]``: 1 where ``j != i`` is one of row i's top-``k`` (spec 4.1 step 3)."""
    n = K.shape[0]
    if not 1 <= k < n:
        raise ConfigError(f"CKNNA needs 1 <= k < n, got k={k} with n={n}; lower k or use more samples")
    Kd = K.clone()
    Kd.fill_diagonal_(float("-inf"))  # a sample is never its own neighbour
    idx = Kd.topk(k, dim=1).indices  # [n, k]
    return torch.zeros_like(K).scatter_(1, idx, 1.0)  # [n, n]


def hsic_unbiased(K: Tensor, L: Tensor) -> Tensor:
    """Unbiased HSIC (Song et al. 2012, spec 4.1 step 7) of ``[m, m]`` kernels, ``m >= 4``.

    With ``K~, L~`` the kernels with zeroed diagonals::

        HSIC = [ sum(K~ o L~^T) + sum(K~) sum(L~) / ((m-1)(m-2)) - 2 sum(K~ L~) / (m-2) ] / (m (m-3))

    ``sum(K~ o L~^T) = trace(K~ L~)`` keeps the transpose because masked kernels are not symmetric;
    ``sum(K~ L~) = (1^T K~)(L~ 1)`` is computed without the ``m^3`` product.
    """
    m = K.shape[0]
    if m < 4:
        raise ConfigError(f"unbiased HSIC needs at least 4 samples, got {m}; pass at least 4 rows "
                          "(repae analyze: --num-images >= 4)")
    Kt = K.clone()
    Kt.fill_diagonal_(0.0)  # [m, m]
    Lt = L.clone()
    Lt.fill_diagonal_(0.0)  # [m, m]
    trace_kl = (Kt * Lt.T).sum()
    sums = Kt.sum() * Lt.sum() / ((m - 1) * (m - 2))
    prod_sum = (Kt.sum(0) * Lt.sum(1)).sum()  # sum of all entries of K~ L~
    return (trace_kl + sums - 2.0 * prod_sum / (m - 2)) / (m * (m - 3))


def cknna(A: Tensor, B: Tensor, *, k: int = TOPK, outlier_quantile: float | None = OUTLIER_Q,
          outlier_mode: str = "exact") -> float:
    """CKNNA of features ``A [n, dA]`` and ``B [n, dB]`` (rows = the same samples), spec 4.1.

    Args:
        k: neighbours per sample (10 in REPA / REPA-E).
        outlier_quantile: clipping quantile (0.95), ``None`` to skip clipping (then the score is
            exactly invariant to orthogonal transforms of either side; clipping is per entry and
            therefore only approximately so).
        outlier_mode: ``"exact"`` (global sort) or ``"row"`` (per-row quantile averaged).

    Computed in float64 on CPU and float32 elsewhere (n in the thousands on a GPU).
    """
    if A.shape[0] != B.shape[0]:
        raise ConfigError(f"CKNNA needs the same samples on both sides, got {A.shape[0]} and {B.shape[0]} rows; "
                          "pass features of the same images, in the same order, as A and B")
    dtype = torch.float64 if A.device.type == "cpu" else torch.float32
    a = prepare_features(A.to(dtype), outlier_quantile, mode=outlier_mode)  # [n, dA]
    b = prepare_features(B.to(device=A.device, dtype=dtype), outlier_quantile, mode=outlier_mode)  # [n, dB]
    K = a @ a.T  # [n, n]
    L = b @ b.T  # [n, n]
    mk, ml = knn_mask(K, k), knn_mask(L, k)  # [n, n] each
    mutual = mk * ml  # [n, n]
    sim_kl = hsic_unbiased(mutual * K, mutual * L)
    sim_kk = hsic_unbiased(mk * K, mk * K)
    sim_ll = hsic_unbiased(ml * L, ml * L)
    return float(sim_kl / (torch.sqrt(sim_kk * sim_ll) + 1e-6))


# ---------------------------------------------------------------------------------------------
# SiT hidden states and encoder features
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def sit_hidden_states(sit: torch.nn.Module, x_t: Tensor, t: Tensor, y: Tensor,
                      layers: Sequence[int] | None = None) -> dict[int, Tensor]:
    """Token streams ``[B, T, D]`` after each block in ``layers`` (1-based; default all) in one pass.

    Uses forward hooks on ``sit.blocks`` and the public forward with ``stop_at_hidden`` at the
    deepest requested block, so the final layer (and deeper blocks) are skipped.
    """
    depth = len(sit.blocks)
    layers = list(range(1, depth + 1)) if layers is None else sorted({int(l) for l in layers})
    if not layers or layers[0] < 1 or layers[-1] > depth:
        raise ConfigError(f"layers must be block indices in 1..{depth}, got {layers}")
    found: dict[int, Tensor] = {}
    handles = [sit.blocks[l - 1].register_forward_hook(lambda _m, _i, out, l=l: found.__setitem__(l, out))
               for l in layers]
    try:
        sit(x_t, t, y, hidden_at=layers[-1], stop_at_hidden=True)
    finally:
        for h in handles:
            h.remove()
    return found  # {layer: [B, T, D]}


@dataclass
class AlignmentFeatures:
    """Per-sample features for CKNNA: SiT hidden states per block, encoder features, latents.

    ``pool="mean"``: one row per image (tokens averaged). ``pool="tokens"``: ``tokens_per_image``
    random token positions per image (the same positions on both sides), one row per token.
    """

    hidden: dict[int, Tensor]  # layer -> [n, D]
    encoder: Tensor  # [n, D_enc]
    latent: Tensor | None  # [n_images, C*h*w] flattened normalised posterior mean (image rows only)
    pool: str
    t: float
    num_images: int


def _batches(images: Tensor, labels: Tensor, batch_size: int) -> Iterable[tuple[Tensor, Tensor]]:
    for s in range(0, images.shape[0], batch_size):
        yield images[s:s + batch_size], labels[s:s + batch_size]


@torch.no_grad()
def collect_alignment_features(
    sit: torch.nn.Module | None,
    tokenizer,
    encoder: torch.nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]] | tuple[Tensor, Tensor],
    *,
    t: float = 0.5,
    path: str = "linear",
    objective=None,
    pool: str = "mean",
    tokens_per_image: int = 8,
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    keep_latent: bool = True,
) -> AlignmentFeatures:
    """SiT hidden states of noised latents and encoder features of the clean images (spec 4.2).

    For each batch of uint8 images ``[b, 3, H, W]`` and labels ``[b]``: posterior **mean** ->
    normaliser (running statistics, no update) -> ``x_t = objective.noisy_input(z, eps, t')`` at the
    fixed time ``t' = objective.time_at(t)`` (flow: ``alpha_t z + sigma_t eps`` at ``t``) -> SiT with
    the correct labels; the encoder sees the clean images. Image ``i``'s
    noise (and token positions) come from its own CPU generator seeded with
    :func:`repae.sampling.generator.sample_seed` ``(seed, i)``, so results do not depend on batching.

    Args:
        batches: an iterable of ``(images, labels)`` or one ``(images, labels)`` pair of tensors.
        t: noise level in ``[0, 1]`` (t = 0 data, t = 1 noise): the flow time, or for a DDPM
            objective the timestep with the same noise-to-signal ratio (``objective.time_at``).
        path: interpolant name (:func:`repae.diffusion.paths.get_path`) of the flow-matching
            objective used when ``objective`` is not given.
        objective: the generator's training objective (:func:`repae.training.builders.build_objective`;
            a DiT needs its DDPM one); default flow matching on ``path``.
        pool: ``"mean"`` (published protocol) or ``"tokens"`` (per-token rows; needs the SiT token
            grid to equal the encoder's).
        tokens_per_image: rows per image with ``pool="tokens"``.
        layers: SiT blocks (1-based) to keep; default all.
        sit: ``None`` for a VAE without a diffusion model: only the encoder and latent rows.
    """
    from repae.conventions import uint8_to_unit
    from repae.diffusion.objective import FlowMatching
    from repae.diffusion.paths import get_path
    from repae.sampling.generator import sample_seeds

    if pool not in ("mean", "tokens"):
        raise ConfigError(f"unknown pooling {pool!r}; use 'mean' or 'tokens'")
    if not 0.0 <= t <= 1.0:
        raise ConfigError(f"t={t} must lie in [0, 1] (t = 0 data, t = 1 noise)")
    if isinstance(batches, tuple) and len(batches) == 2 and torch.is_tensor(batches[0]):
        batches = _batches(batches[0], batches[1], batch_size)
    if objective is None:
        objective = FlowMatching(get_path(path))
    t_own = objective.time_at(t)  # the objective's own time (the flow time itself)
    device = next((sit if sit is not None else tokenizer).parameters()).device
    hidden: dict[int, list[Tensor]] = {}
    enc_rows, lat_rows = [], []
    n = 0
    for images, labels in batches:
        images = images.to(device)
        labels = torch.as_tensor(labels, dtype=torch.long).to(device)
        x = uint8_to_unit(images)  # [b, 3, H, W]
        z = tokenizer.encode(x).mean  # [b, C, h, w] raw posterior mean
        z_n = tokenizer.normalizer.normalize(z, update=False)  # [b, C, h, w]
        b = z_n.shape[0]
        gens = [torch.Generator().manual_seed(s) for s in sample_seeds(seed, range(n, n + b))]  # one per image
        eps = torch.stack([torch.randn(z_n.shape[1:], generator=g) for g in gens]).to(device)  # [b, C, h, w]
        tt = torch.full((z_n.shape[0],), t_own, device=device)  # [b]
        x_t = objective.noisy_input(z_n, eps, tt)  # [b, C, h, w]
        states = sit_hidden_states(sit, x_t, tt, labels, layers) if sit is not None else {}  # {l: [b, T, D]}
        feats = encoder(images).float()  # [b, N, D_enc]
        if pool == "mean":
            for l, h in states.items():
                hidden.setdefault(l, []).append(h.float().mean(1).cpu())  # [b, D]
            enc_rows.append(feats.mean(1).cpu())  # [b, D_enc]
        else:
            T = next(iter(states.values())).shape[1] if states else feats.shape[1]
            if feats.shape[1] != T:
                raise ConfigError(f"per-token CKNNA needs equal token grids: SiT has {T} tokens, the encoder "
                                  f"{feats.shape[1]}; use pool='mean'")
            m = min(tokens_per_image, T)
            pos = torch.stack([torch.randperm(T, generator=g)[:m] for g in gens])  # [b, m]
            pos = pos.to(device)
            for l, h in states.items():
                rows = h.float().gather(1, pos[..., None].expand(-1, -1, h.shape[-1]))  # [b, m, D]
                hidden.setdefault(l, []).append(rows.flatten(0, 1).cpu())  # [b*m, D]
            enc = feats.gather(1, pos[..., None].expand(-1, -1, feats.shape[-1]))  # [b, m, D_enc]
            enc_rows.append(enc.flatten(0, 1).cpu())  # [b*m, D_enc]
        if keep_latent:
            lat_rows.append(z_n.float().flatten(1).cpu())  # [b, C*h*w]
        n += images.shape[0]
    if n == 0:
        raise ConfigError("no images to compute CKNNA on; check --data / --num-images")
    return AlignmentFeatures(
        hidden={l: torch.cat(v) for l, v in sorted(hidden.items())}, encoder=torch.cat(enc_rows),
        latent=torch.cat(lat_rows) if keep_latent else None, pool=pool, t=float(t), num_images=n,
    )


@dataclass
class LayerwiseCKNNA:
    """CKNNA between the SiT hidden state after each block and the encoder features."""

    layers: list[int]
    values: list[float]
    n: int  # rows compared (images, or image-token pairs with pool="tokens")
    k: int
    t: float
    pool: str
    latent_cknna: float | None = None  # flattened latent vs encoder (the VAE side), image rows
    extra: dict = field(default_factory=dict)

    def at(self, layer: int) -> float:
        return self.values[self.layers.index(layer)]

    def best(self) -> tuple[int, float]:
        i = max(range(len(self.values)), key=lambda j: -math.inf if math.isnan(self.values[j]) else self.values[j])
        return self.layers[i], self.values[i]

    def to_dict(self) -> dict:
        return asdict(self)


def layerwise_cknna(features: AlignmentFeatures, *, k: int = TOPK, device: str | torch.device | None = None,
                    **cknna_kwargs) -> LayerwiseCKNNA:
    """Per-layer CKNNA curve from :func:`collect_alignment_features` (and the latent-side value).

    ``device``: where the ``n x n`` kernels are built (default: CUDA if available). ``k`` is
    lowered to ``n - 1`` for tiny sets (recorded in the result).
    """
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    enc = features.encoder.to(dev)
    n = enc.shape[0]
    k_eff = min(k, n - 1)
    layers = list(features.hidden)
    values = [cknna(features.hidden[l].to(dev), enc, k=k_eff, **cknna_kwargs) for l in layers]
    latent_value = None
    if features.latent is not None and features.pool == "mean":
        latent_value = cknna(features.latent.to(dev), enc, k=k_eff, **cknna_kwargs)
    return LayerwiseCKNNA(layers=layers, values=values, n=n, k=k_eff, t=features.t, pool=features.pool,
                          latent_cknna=latent_value)
