"""The paper's claims and the rule that marks each one from per-seed numbers only.

Every claim compares one metric between two rows of the study (:data:`repae.study.plan.KINDS`):
"row A has a lower (or higher) value than row B". :func:`mark` decides it:

1. each row's value is the mean over its seeds; its **seed spread** ``s`` is the sample standard
   deviation over seeds (``n >= 2``). A row with a single seed borrows the **pooled** seed spread
   of the same metric over the study's rows that have several seeds and do vary (a frozen
   tokenizer measured by several runs gives identical numbers: spread 0, left out of the pool);
   with no such row, the claim is inconclusive;
2. ``gain`` = how far A is from B in the claimed direction (``mean_B - mean_A`` for "lower");
   ``margin = s_A + s_B`` (the one-standard-deviation intervals of the two rows touch when
   ``|gain| = margin``);
3. **holds** if ``gain > margin``; **does not hold** if ``gain < -margin``; otherwise
   **inconclusive (within seed noise)**. A row without finished runs makes the claim inconclusive.

The rule and the list below were fixed before any study was run; nothing in the report adapts
either to the results. One exception, stated here: the three image-variance claims
(``e2e-collapses-image-variance``, ``e2e-collapses-image-variance-fraction``,
``repa-loss-keeps-image-variance``) were added on 2026-12-06 (issue 21), after the first study had
run. Its PCA views had shown that naive end-to-end training turns the latent into one fixed map
that the spatial-variance claims cannot see, which is why the measure was made; the claims were
written (same rule, same rows as the spatial-variance claims) before the measure had been computed
on any trained run (only the frozen "VAE init." was measured, as a reference value in
``docs/analysis.md``: IV/SV 0.61). No earlier claim was changed. Likewise the two target-quality
claims (``mae-target-beats-random``, ``simclr-target-beats-random``) were added on 2026-12-06
(issue 21 item 2) together with the ``--extra targets`` rows they compare, before any of those rows
had run or any target had been probed in a study; they are fixed pairs of rows (a pretrained target
against the random one of the same study), not "the best-probing target", so no probe or FD result
can choose what is compared. Sources: the seed's tables
(``../shared/seed/repa-e-presentation.txt``) and
``../shared/docs/spec-repae.md`` section 9 (the paper's ablations there are marked [unverified]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

HOLDS = "holds"
FAILS = "does not hold"
INCONCLUSIVE = "inconclusive"
MARKS = (HOLDS, FAILS, INCONCLUSIVE)


@dataclass(frozen=True)
class Claim:
    id: str
    text: str  # the claim as the study tests it
    source: str  # where the paper makes it (seed table heading / paper section) and its numbers there
    metric: str  # per-run result key (repae.study.run.RESULT_KEYS)
    better: str  # "lower" | "higher": what row ``a`` is claimed to have
    a: str  # study row claimed better
    b: str  # study row it is compared with


CLAIMS: tuple[Claim, ...] = (
    Claim("repae-beats-repa", "REPA-E gives a lower FD than REPA at the same steps and batch",
          "seed '100K Iterations': REPA 19.40 vs REPA-E (VAE init.) 12.83 gFID (SiT-XL/2, sec. 4.2)",
          "fid", "lower", "repa-e", "repa"),
    Claim("repae-beats-vanilla", "REPA-E gives a lower FD than vanilla SiT training",
          "spec 9.1: >45x speed-up over vanilla SiT; seed system table SiT 8.61 (1400 ep) vs REPA-E 4.07 (80 ep)",
          "fid", "lower", "repa-e", "vanilla"),
    Claim("repa-beats-vanilla", "REPA gives a lower FD than vanilla SiT training (the REPA baseline works)",
          "seed system table: SiT 8.61 (1400 ep) vs REPA 5.90 (800 ep)", "fid", "lower", "repa", "vanilla"),
    Claim("naive-e2e-collapses-sv", "back-propagating the diffusion loss into the VAE collapses the latent's "
          "spatial variance", "seed 'Naive End-to-End Tuning is Ineffective' (sec. 3.1): 17.06 -> 0.02",
          "latent_sv", "lower", "e2e-diffusion", "repa"),
    Claim("naive-e2e-collapses-tv", "... and its total variation",
          "seed 'Naive End-to-End Tuning is Ineffective' (sec. 3.1): 6627.35 -> 89.80",
          "latent_tv", "lower", "e2e-diffusion", "repa"),
    Claim("repa-loss-keeps-sv", "end-to-end tuning with the REPA loss keeps a higher spatial variance than with "
          "the diffusion loss", "seed 'Naive End-to-End Tuning is Ineffective': E2E w/ REPA 18.02 vs w/ Diff. 0.02",
          "latent_sv", "higher", "repa-e", "e2e-diffusion"),
    # added 2026-12-06, before the measure was computed on any run (module docstring)
    Claim("e2e-collapses-image-variance", "back-propagating the diffusion loss into the VAE collapses the latent's "
          "image variance (the part of its spatial variance that changes from image to image)",
          "seed 'Naive End-to-End Tuning is Ineffective' (sec. 3.1): the latent collapses (SV 17.06 -> 0.02); "
          "image variance is our measure of that collapse (repae.analysis.latent_stats), not the paper's",
          "latent_image_variance", "lower", "e2e-diffusion", "repa"),
    Claim("e2e-collapses-image-variance-fraction", "... and the share of its spatial variance that changes from "
          "image to image (scale-free; 0 = the same map for every image)",
          "seed 'Naive End-to-End Tuning is Ineffective' (sec. 3.1); our measure, not the paper's",
          "latent_image_variance_fraction", "lower", "e2e-diffusion", "repa"),
    Claim("repa-loss-keeps-image-variance", "end-to-end tuning with the REPA loss keeps a higher image variance than "
          "with the diffusion loss", "seed 'Naive End-to-End Tuning is Ineffective': E2E w/ REPA keeps the latent "
          "(SV 18.02) where E2E w/ Diff. collapses it (0.02); our measure, not the paper's",
          "latent_image_variance", "higher", "repa-e", "e2e-diffusion"),
    Claim("naive-e2e-hurts-fd", "naive end-to-end training (diffusion loss into the VAE) gives a worse FD than a "
          "frozen VAE", "seed 'Naive End-to-End Tuning is Ineffective': 'reduced generation performance'",
          "fid", "lower", "repa", "e2e-diffusion"),
    Claim("repae-raises-cknna", "REPA-E raises the alignment (CKNNA of the SiT at the alignment depth) over REPA",
          "seed 'Representation Alignment is Bottlenecked by VAE' / 'High CKNNA, better generation' (sec. 3.2)",
          "cknna", "higher", "repa-e", "repa"),
    Claim("stopgrad-needed", "removing the stop-gradient hurts FD",
          "paper Table 6 (seed 'Component'): w/o stopgrad 444.1 vs REPA-E 16.3 gFID", "fid", "lower",
          "repa-e", "no-stopgrad"),
    Claim("batchnorm-needed", "replacing the latent BatchNorm by fixed statistics hurts FD",
          "paper Table 6 (seed 'Component'): w/o batch-norm 18.1 vs REPA-E 16.3 gFID", "fid", "lower",
          "repa-e", "no-normalizer"),
    Claim("lreg-needed", "removing L_REG hurts FD",
          "paper Table 6 (seed 'Component'): w/o L_REG 19.2 vs REPA-E 16.3 gFID", "fid", "lower", "repa-e", "no-lreg"),
    Claim("scratch-beats-repa", "REPA-E with the VAE trained from scratch still beats REPA",
          "seed '100K Iterations': REPA 19.40 vs REPA-E (scratch) 14.12 gFID", "fid", "lower",
          "repa-e-scratch", "repa"),
    Claim("init-beats-scratch", "starting REPA-E from a pretrained VAE beats starting from scratch",
          "seed '100K Iterations': REPA-E (scratch) 14.12 vs REPA-E (VAE init.) 12.83 gFID", "fid", "lower",
          "repa-e", "repa-e-scratch"),
    Claim("dropin-vanilla", "a fresh SiT trained on the frozen E2E-VAE beats one trained on the initial VAE",
          "seed 'The impact of end-to-end tuning' (sec. 4.3): SiT-XL w/o REPA, SD-VAE 17.20 vs E2E-VAE 5.26",
          "fid", "lower", "dropin-vanilla", "vanilla"),
    Claim("dropin-repa", "... and so does a fresh SiT trained with REPA",
          "seed 'The impact of end-to-end tuning': SiT-XL w/ REPA, SD-VAE 7.90 vs E2E-VAE 3.46",
          "fid", "lower", "dropin-repa", "repa"),
    Claim("dropin-dit", "a fresh DiT trained on the frozen E2E-VAE beats one trained on the initial VAE",
          "seed 'The impact of end-to-end tuning': DiT-XL w/o REPA, SD-VAE 19.82 vs E2E-VAE 6.75",
          "fid", "lower", "dropin-dit", "dit"),
    Claim("dropin-dit-repa", "... and so does a fresh DiT trained with REPA",
          "seed 'The impact of end-to-end tuning': DiT-XL w/ REPA, SD-VAE 12.29 vs E2E-VAE 4.20",
          "fid", "lower", "dropin-dit-repa", "dit-repa"),
    Claim("se-eases-diffusion", "an SE fine-tune gives a fresh SiT a lower FD than the same fine-tune without SE",
          "seed 'Background' / Skorokhodov et al. 2025: SE removes high-frequency latent noise, better gFID",
          "fid", "lower", "tokreg-se", "tokreg-base"),
    Claim("eq-eases-diffusion", "an EQ-VAE fine-tune gives a fresh SiT a lower FD than the same fine-tune without it",
          "seed 'Background' / Kouzelis et al. 2025: an equivariant latent is easier to diffuse",
          "fid", "lower", "tokreg-eq", "tokreg-base"),
    Claim("vf-eases-diffusion", "a VF-loss fine-tune gives a fresh SiT a lower FD than the same fine-tune without it",
          "seed 'Background' / Yao et al. 2025 (VA-VAE): aligning the latent with a foundation model",
          "fid", "lower", "tokreg-vf", "tokreg-base"),
    Claim("e2e-vae-rfid", "the E2E-VAE reconstructs better (rFID) than the tokenizer it started from",
          "seed system table: SD-VAE rFID 0.61 vs E2E-VAE 0.28; spec 9.2 'comparable or better'",
          "rfid", "lower", "repa-e", "repa"),
    # --extra targets; added 2026-12-06 with those rows, before any of them ran (module docstring)
    Claim("mae-target-beats-random", "REPA aligned to the pretrained (MAE) repae-vit-t4 gives a lower FD than REPA "
          "aligned to a random ViT of the same architecture (a better target, better generation)",
          "REPA (Yu et al. 2024), sec. 4 [unverified]: alignment targets with a higher linear-probe accuracy give a "
          "lower FID ('better encoder, better generation'); the random target is our control, not the paper's",
          "fid", "lower", "target-vit", "target-random"),
    Claim("simclr-target-beats-random", "... and so does REPA aligned to the pretrained (SimCLR) repae-cnn-p4",
          "REPA (Yu et al. 2024), sec. 4 [unverified]: 'better encoder, better generation'; our CNN target and "
          "random control, not the paper's", "fid", "lower", "target-cnn", "target-random"),
)


@dataclass
class Verdict:
    claim: Claim
    mark: str
    a_values: list[float]
    b_values: list[float]
    a_mean: float | None
    b_mean: float | None
    a_spread: float | None
    b_spread: float | None
    gain: float | None  # in the claimed direction (> 0: A is better)
    margin: float | None
    reason: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["claim"] = asdict(self.claim)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def pooled_sd(groups: Sequence[Sequence[float]]) -> float | None:
    """Pooled sample standard deviation of the groups with >= 2 values that vary (None if there is none)."""
    num = den = 0.0
    for g in groups:
        g = _finite(g)
        if len(g) < 2:
            continue
        _, s = mean_sd(g)
        if not s:
            continue  # identical values: a deterministic measurement, not seed noise
        num += (len(g) - 1) * s * s
        den += len(g) - 1
    return math.sqrt(num / den) if den else None


def mark(a: Sequence[float | None], b: Sequence[float | None], *, better: str = "lower",
         pooled: float | None = None) -> Verdict:
    """Mark "A is ``better`` than B" from per-seed values (see the module docstring for the rule).

    Returns a :class:`Verdict` whose ``claim`` is a placeholder; :func:`evaluate_claims` fills it.
    """
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    av, bv = _finite(a), _finite(b)
    placeholder = Claim("", "", "", "", better, "A", "B")
    if not av or not bv:
        missing = " and ".join(n for n, v in (("A", av), ("B", bv)) if not v)
        return Verdict(placeholder, INCONCLUSIVE, av, bv, None, None, None, None, None, None,
                       f"no finished run with a finite value for {missing}")
    am, asd = mean_sd(av)
    bm, bsd = mean_sd(bv)
    borrowed = [name for name, sd in (("A", asd), ("B", bsd)) if sd is None]
    asd = pooled if asd is None else asd
    bsd = pooled if bsd is None else bsd
    gain = (bm - am) if better == "lower" else (am - bm)
    if asd is None or bsd is None:
        return Verdict(placeholder, INCONCLUSIVE, av, bv, am, bm, asd, bsd, gain, None,
                       "single seed and no seed spread of this metric anywhere in the study")
    margin = asd + bsd
    how = f"gain {gain:.4g} vs seed spread {margin:.4g}" + (
        f" (pooled spread for {' and '.join(borrowed)})" if borrowed else "")
    if gain > margin:
        result = HOLDS
    elif gain < -margin:
        result = FAILS
    else:
        result = INCONCLUSIVE
        how += ": within seed noise"
    return Verdict(placeholder, result, av, bv, am, bm, asd, bsd, gain, margin, how)


def evaluate_claims(values: Mapping[str, Mapping[str, Sequence[float | None]]],
                    claims: Sequence[Claim] = CLAIMS) -> list[Verdict]:
    """Mark every claim whose two rows are in the study.

    Args:
        values: ``{metric: {row: [value per seed]}}`` (missing runs simply absent).
    """
    out = []
    for c in claims:
        rows = values.get(c.metric, {})
        pooled = pooled_sd(list(rows.values()))
        v = mark(rows.get(c.a, []), rows.get(c.b, []), better=c.better, pooled=pooled)
        v.claim = c
        out.append(v)
    return out
