"""Analysis measurements with analytic answers (spec-related-methods.md 3.2, 4, 6)."""

from __future__ import annotations

import math

import pytest
import torch

from repae.analysis import cknna as ck
from repae.analysis.dct import blockwise_dct, blockwise_idct, combine_spectra, dct_matrix, dct_spectrum, zigzag_order
from repae.analysis.latent_stats import image_variance, latent_stats, spatial_variance, total_variation
from repae.analysis.pca import pca_rgb
from repae.errors import ConfigError

# --- DCT ---------------------------------------------------------------------------------------


def test_dct_matrix_orthonormal_and_matches_scipy():
    d = dct_matrix(8)
    assert torch.allclose(d @ d.T, torch.eye(8, dtype=torch.float64), atol=1e-12)
    scipy_fft = pytest.importorskip("scipy.fft")
    x = torch.randn(8, dtype=torch.float64)
    assert torch.allclose(d @ x, torch.from_numpy(scipy_fft.dct(x.numpy(), norm="ortho")), atol=1e-12)


def test_zigzag_is_jpeg_order():
    flat = [u * 8 + v for u, v in zigzag_order(8)]
    assert flat[:10] == [0, 1, 8, 16, 9, 2, 3, 10, 17, 24]
    assert flat[-3:] == [55, 62, 63] and sorted(flat) == list(range(64))


def test_constant_image_is_all_dc():
    x = torch.full((2, 3, 16, 16), 0.3)
    spec = dct_spectrum(x)
    assert spec.profile.shape == (3, 64) and spec.bands.shape == (3, 15)
    assert torch.allclose(spec.profile[:, 0], torch.ones(3)) and spec.profile[:, 1:].abs().max() < 1e-6
    assert torch.allclose(spec.bands[:, 0], torch.ones(3))
    assert spec.num_blocks == 2 * 4
    ac = dct_spectrum(x, include_dc=False)  # no AC energy at all -> zero profile, not NaN
    assert torch.count_nonzero(ac.profile) == 0


def test_checkerboard_is_highest_band():
    i = torch.arange(16)
    board = ((i[:, None] + i[None, :]) % 2).float() * 2 - 1  # [16, 16] pixel checkerboard +-1
    spec = dct_spectrum(board.expand(1, 4, 16, 16))
    # (-1)^i is not exactly the k=7 DCT-II basis vector: 82% of its 1D energy (67% in 2D) is at k=7
    assert (spec.bands.argmax(1) == 14).all() and (spec.profile.argmax(1) == 63).all()
    assert torch.allclose(spec.bands[:, -1], torch.full((4,), 0.6742), atol=1e-3)
    assert (spec.high_frequency_fraction() > 0.98).all()
    # the (7, 7) basis image itself: exactly all energy in the highest band
    d = dct_matrix(8).float()
    basis = torch.outer(d[7], d[7]).repeat(2, 2)  # [16, 16]
    exact = dct_spectrum(basis.expand(1, 2, 16, 16))
    assert torch.allclose(exact.bands[:, -1], torch.ones(2), atol=1e-6)


def test_dct_round_trip_and_parseval():
    x = torch.randn(2, 5, 16, 24, dtype=torch.float64)
    c = blockwise_dct(x)
    assert c.shape == (2, 5, 2, 3, 8, 8)
    assert torch.allclose(blockwise_idct(c), x, atol=1e-12)
    assert torch.allclose(c.pow(2).sum(), x.pow(2).sum())  # orthonormal: energy preserved


def test_streamed_spectrum_equals_full():
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    full = dct_spectrum(x, include_dc=False)
    parts = combine_spectra([dct_spectrum(x[:2], include_dc=False), dct_spectrum(x[2:], include_dc=False)])
    assert parts.num_blocks == full.num_blocks and torch.allclose(parts.profile, full.profile, atol=1e-6)
    assert torch.allclose(full.profile.sum(1), torch.ones(3)) and (full.profile[:, 0] == 0).all()


def test_dct_grid_not_multiple_of_block_is_an_error():
    with pytest.raises(ConfigError, match="block=4"):
        dct_spectrum(torch.zeros(1, 4, 4, 4))
    assert dct_spectrum(torch.randn(1, 4, 4, 4), block=4).bands.shape == (4, 7)


# --- spatial variance / total variation -------------------------------------------------------


def test_sv_tv_hand_computed():
    z = torch.zeros(1, 2, 2, 2)
    z[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])  # channel 0
    z[0, 1] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # channel 1: constant
    # channel 0: values 0..3, population variance 1.25; vertical |diff| = 2, horizontal = 1
    assert torch.allclose(spatial_variance(z), torch.tensor([[1.25, 0.0]], dtype=torch.float64))
    tv, tv_sum = total_variation(z)
    assert torch.allclose(tv, torch.tensor([[3.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(tv_sum, torch.tensor([[6.0, 0.0]], dtype=torch.float64))  # 2 + 2 + 1 + 1
    s = latent_stats(z)
    assert s.spatial_variance == pytest.approx(0.625) and s.total_variation == pytest.approx(1.5)
    assert s.tv_sum == pytest.approx(6.0) and s.tv_over_sqrt_sv == pytest.approx(1.5 / math.sqrt(0.625))


def test_tv_over_sqrt_sv_is_scale_free_and_white_noise_reference():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 4, 32, 32, generator=g)
    a, b = latent_stats(z), latent_stats(7.5 * z + 3.0)
    assert b.spatial_variance == pytest.approx(7.5**2 * a.spatial_variance)
    assert b.total_variation == pytest.approx(7.5 * a.total_variation)
    assert b.tv_over_sqrt_sv == pytest.approx(a.tv_over_sqrt_sv)
    assert a.tv_over_sqrt_sv == pytest.approx(4 / math.sqrt(math.pi), rel=0.03)  # i.i.d. noise
    # per-channel scales: only the standardised ratio is invariant
    scales = torch.tensor([1.0, 10.0, 0.1, 3.0]).view(1, 4, 1, 1)
    s1, s2 = latent_stats(z, standardized=True), latent_stats(z * scales, standardized=True)
    assert s2.tv_over_sqrt_sv == pytest.approx(s1.tv_over_sqrt_sv) and s2.standardized == "batch"
    given = latent_stats(z * scales, standardized=True, mean=torch.zeros(4), std=scales.flatten())
    assert given.spatial_variance == pytest.approx(a.spatial_variance) and given.standardized == "given"


def test_smooth_latent_has_low_ratio():
    y = torch.linspace(0, 1, 32)
    smooth = (y[:, None] + y[None, :]).expand(2, 3, 32, 32)
    assert latent_stats(smooth).tv_over_sqrt_sv < 0.3


# --- image variance (between images; REPA-E section 3's collapse) --------------------------------


def test_image_variance_flat_latent_is_zero():
    z = torch.full((6, 3, 4, 4), 0.1)  # every image the same constant: SV = IV = 0, IVF := 0 (flat)
    s = latent_stats(z)
    assert s.image_variance == pytest.approx(0.0, abs=1e-20) and s.spatial_variance == pytest.approx(0.0, abs=1e-20)
    assert s.image_variance_fraction == 0.0
    # flat within each image but the level follows the image: still IV = 0 (the per-image offset is removed)
    levels = torch.randn(6, 3, 1, 1, generator=torch.Generator().manual_seed(1))
    s = latent_stats(levels.expand(6, 3, 4, 4))
    assert s.image_variance == pytest.approx(0.0, abs=1e-20) and s.image_variance_fraction == 0.0


def test_image_variance_fixed_pattern_is_zero_while_sv_stays_large():
    g = torch.Generator().manual_seed(0)
    pattern = 3.0 * torch.randn(4, 8, 8, generator=g)  # [C, h, w] the same map for every image
    offsets = torch.randn(16, 4, 1, 1, generator=g)  # per-image, per-channel levels (ignored like in SV)
    s = latent_stats(pattern.expand(16, 4, 8, 8) + offsets)
    assert s.spatial_variance > 5.0  # Var 9 per entry: within-image variance is large
    assert s.image_variance == pytest.approx(0.0, abs=1e-12)
    assert s.image_variance_fraction == pytest.approx(0.0, abs=1e-12)
    assert s.pattern_variance == pytest.approx(s.spatial_variance, rel=1e-12)


def test_image_variance_iid_latent_fraction_is_n_minus_1_over_n():
    # i.i.d. N(0, 1): IV and PV are independent sum-of-squares terms of a two-way layout (interaction,
    # positions), so IVF ~ Beta(C (N-1)(P-1) / 2, C (P-1) / 2) exactly, mean (N-1)/N, sd ~ 7e-4 here
    N, C, h, w = 64, 4, 16, 16
    a_, b_ = C * (N - 1) * (h * w - 1) / 2, C * (h * w - 1) / 2
    sd = math.sqrt(a_ * b_ / ((a_ + b_) ** 2 * (a_ + b_ + 1)))
    z = torch.randn(N, C, h, w, generator=torch.Generator().manual_seed(0))
    s = latent_stats(z)
    assert s.image_variance_fraction == pytest.approx((N - 1) / N, abs=4 * sd)
    assert s.image_variance + s.pattern_variance == pytest.approx(s.spatial_variance, rel=1e-12)  # SV = IV + PV
    iv, pv = image_variance(z)
    assert iv.shape == pv.shape == (C,) and float(iv.mean()) == pytest.approx(s.image_variance)
    # a z + b: IV scales with a^2, the fraction is unchanged
    t = latent_stats(2.5 * z - 4.0)
    assert t.image_variance == pytest.approx(6.25 * s.image_variance, rel=1e-9)
    assert t.image_variance_fraction == pytest.approx(s.image_variance_fraction, rel=1e-9)


def test_image_variance_mixed_pattern_and_noise_exact_and_in_expectation():
    g = torch.Generator().manual_seed(0)
    N, C, h, w, a, b = 32, 3, 8, 8, 1.5, 0.7
    u = torch.randn(C, h, w, generator=g, dtype=torch.float64)  # shared pattern
    var_u = float(u.flatten(1).var(dim=1, unbiased=False).mean())  # mean_c Var_p u (population)
    # exact: e[2k] = m_k, e[2k+1] = -m_k with m_k a balanced +-1 map: at every position mean_n e = 0 and
    # Var_n e = 1, every image has spatial mean 0 -> IV = b^2, PV = a^2 Var_p u, IVF = b^2 / (a^2 Var_p u + b^2)
    m = torch.ones(N // 2, C, h * w, dtype=torch.float64)
    m[:, :, : h * w // 2] = -1.0
    m = torch.stack([row[torch.randperm(h * w, generator=g)] for row in m.flatten(0, 1)]).view(N // 2, C, h, w)
    e = torch.stack([m, -m], dim=1).reshape(N, C, h, w)
    s = latent_stats(a * u + b * e)
    assert s.image_variance == pytest.approx(b**2, rel=1e-9)
    assert s.pattern_variance == pytest.approx(a**2 * var_u, rel=1e-9)
    assert s.image_variance_fraction == pytest.approx(b**2 / (a**2 * var_u + b**2), rel=1e-9)
    # Gaussian per-image noise: E IV = b^2 (N-1)(P-1)/(N P), E SV = a^2 Var_p u + b^2 (P-1)/P
    N, P = 512, h * w
    z = a * u + b * torch.randn(N, C, h, w, generator=g, dtype=torch.float64)
    expected = b**2 * (N - 1) * (P - 1) / (N * P) / (a**2 * var_u + b**2 * (P - 1) / P)
    assert latent_stats(z).image_variance_fraction == pytest.approx(expected, rel=0.02)


def test_image_variance_needs_two_images():
    s = latent_stats(torch.randn(1, 2, 4, 4))
    assert math.isnan(s.image_variance) and math.isnan(s.image_variance_fraction)
    assert s.spatial_variance > 0


# --- PCA ---------------------------------------------------------------------------------------


def _three_patterns(h=8, w=8):
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    p = torch.stack([torch.cos(math.pi * (2 * xx + 1) / (2 * w)),  # orthogonal, zero-mean DCT patterns
                     torch.cos(math.pi * (2 * yy + 1) / (2 * h)),
                     torch.cos(math.pi * (2 * xx + 1) * 2 / (2 * w))])  # [3, h, w]
    return p / p.flatten(1).norm(dim=1)[:, None, None]


def test_pca_recovers_known_patterns():
    C = 6
    q, _ = torch.linalg.qr(torch.randn(C, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    loadings = q[:, :3].T  # [3, C] orthonormal channel directions
    p = _three_patterns()  # [3, h, w]
    amp = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    z = torch.einsum("k,kc,khw->chw", amp, loadings, p)[None] + 0.5  # [1, C, h, w] + offset
    res = pca_rgb(z.float(), joint=True)
    cos = (res.components.double() @ loadings.T).abs()  # [3, 3]
    assert torch.allclose(cos, torch.eye(3, dtype=torch.float64), atol=1e-4)  # order by variance
    assert torch.allclose(res.explained_ratio, torch.tensor([9.0, 4.0, 1.0]) / 14, atol=1e-5)
    for k in range(3):  # projections are the patterns (up to the fixed sign), scaled by amplitude
        corr = torch.corrcoef(torch.stack([res.projections[0, k].flatten().double(), p[k].flatten()]))[0, 1]
        assert abs(corr) > 0.9999
    comps = res.components
    assert (comps.gather(1, comps.abs().argmax(1, keepdim=True)) > 0).all()  # sign convention
    assert res.images.shape == (1, 3, 8, 8) and res.images.min() == 0 and res.images.max() == 1
    neg = pca_rgb(-z.float())  # same axes (sign fixed by the loadings), negated scores
    assert torch.allclose(neg.components, comps, atol=1e-5) and torch.allclose(neg.images, 1 - res.images, atol=1e-5)


def test_pca_is_sign_reproducible_and_per_image():
    z = torch.randn(3, 5, 6, 6, generator=torch.Generator().manual_seed(2))
    a, b = pca_rgb(z, joint=False), pca_rgb(z.clone(), joint=False)
    assert a.components.shape == (3, 3, 5) and torch.equal(a.images, b.images)
    for i in range(3):
        img = a.images[i]
        assert img.min() == 0 and img.max() == pytest.approx(1.0)
    small = pca_rgb(torch.randn(2, 2, 4, 4))  # two channels: third component black
    assert torch.count_nonzero(small.components[2]) == 0


# --- CKNNA -------------------------------------------------------------------------------------


def _feats(n, d, seed):
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_hsic_unbiased_matches_loop_definition():
    K, L = _feats(7, 7, 0), _feats(7, 7, 1)  # non-symmetric on purpose (masked kernels are not)
    m = 7
    Kt, Lt = K.clone().fill_diagonal_(0), L.clone().fill_diagonal_(0)
    one = torch.ones(m, dtype=torch.float64)
    ref = (torch.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((m - 1) * (m - 2))
           - 2 * (one @ Kt @ Lt @ one) / (m - 2)) / (m * (m - 3))
    assert torch.allclose(ck.hsic_unbiased(K, L), ref)


def test_cknna_identical_is_one():
    a = _feats(200, 16, 0)
    assert ck.cknna(a, a.clone()) == pytest.approx(1.0, abs=1e-4)


def test_cknna_independent_is_near_zero():
    vals = [ck.cknna(_feats(300, 32, s), _feats(300, 32, 100 + s)) for s in range(3)]
    assert max(abs(v) for v in vals) < 0.05


def test_cknna_invariant_to_rotation():
    a = _feats(150, 24, 3)
    b = a[:, :12] + 0.3 * _feats(150, 12, 4)  # partly related features
    q, _ = torch.linalg.qr(_feats(12, 12, 5))
    exact = ck.cknna(a, b, outlier_quantile=None)
    assert ck.cknna(a, b @ q, outlier_quantile=None) == pytest.approx(exact, abs=1e-9)
    assert 0.1 < exact < 0.99
    clipped = ck.cknna(a, b)  # per-entry clipping: invariant only approximately
    assert ck.cknna(a, b @ q) == pytest.approx(clipped, abs=0.05)


def test_cknna_bad_inputs():
    with pytest.raises(ConfigError, match="same samples"):
        ck.cknna(_feats(10, 4, 0), _feats(11, 4, 1))
    with pytest.raises(ConfigError, match="k < n"):
        ck.cknna(_feats(10, 4, 0), _feats(10, 4, 1), k=10)


def test_outlier_clip_exact_threshold():
    x = torch.arange(1, 101, dtype=torch.float64).view(10, 10)  # |entries| 1..100
    assert ck.remove_outliers(x, 0.95).max() == 96  # sorted[int(0.95 * 100)] = 96


# --- per-layer CKNNA with a tiny SiT -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models():
    from repae.encoders import build_encoder
    from repae.models.sit import build_sit
    from repae.tokenizer.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.from_preset("tiny-f4d4").eval()  # 32 px -> [4, 8, 8]
    sit = build_sit("SiT-T/1", input_size=8, in_channels=4, num_classes=10).eval()  # 64 tokens, depth 4
    with torch.no_grad():  # leave adaLN-Zero's identity init so that the blocks differ
        for p in sit.parameters():
            p.add_(0.02 * torch.randn_like(p))
    enc = build_encoder("random", resolution=32, embed_dim=32, patch_size=4)  # 64 tokens
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(24) % 10
    return tok, sit, enc, images, labels


def test_sit_hidden_states_match_forward(tiny_models):
    tok, sit, _, _, _ = tiny_models
    x = torch.randn(3, 4, 8, 8)
    t, y = torch.full((3,), 0.5), torch.tensor([0, 1, 2])
    states = ck.sit_hidden_states(sit, x, t, y)
    assert list(states) == [1, 2, 3, 4]
    for layer, h in states.items():
        assert torch.equal(h, sit(x, t, y, hidden_at=layer).hidden)
    assert list(ck.sit_hidden_states(sit, x, t, y, layers=[2])) == [2]
    with pytest.raises(ConfigError, match="1..4"):
        ck.sit_hidden_states(sit, x, t, y, layers=[5])


def test_layerwise_cknna_curve(tiny_models):
    tok, sit, enc, images, labels = tiny_models
    feats = ck.collect_alignment_features(sit, tok, enc, (images, labels), t=0.5, batch_size=10)
    assert feats.num_images == 24 and feats.encoder.shape == (24, 32) and feats.hidden[1].shape == (24, 64)
    assert feats.latent.shape == (24, 4 * 8 * 8)
    again = ck.collect_alignment_features(sit, tok, enc, (images, labels), t=0.5, batch_size=7)
    assert torch.allclose(again.hidden[4], feats.hidden[4], atol=1e-5)  # noise independent of batching
    curve = ck.layerwise_cknna(feats, device="cpu")
    assert curve.layers == [1, 2, 3, 4] and curve.k == 10 and curve.n == 24
    assert all(math.isfinite(v) and -1 <= v <= 1 for v in curve.values) and curve.latent_cknna is not None
    tokens = ck.collect_alignment_features(sit, tok, enc, (images[:6], labels[:6]), pool="tokens",
                                           tokens_per_image=5, layers=[2])
    assert tokens.hidden[2].shape == (30, 64) and tokens.encoder.shape == (30, 32) and tokens.latent.shape[0] == 6
    assert ck.layerwise_cknna(tokens, k=4, device="cpu").latent_cknna is None
