"""``repae analyze``: DCT spectra, latent statistics, PCA views, reconstructions and CKNNA of runs / VAEs.

Examples::

    repae analyze runs/repae-fmnist                            # -> runs/repae-fmnist/analysis/
    repae analyze runs/repae runs/e2e-diffusion --out cmp/     # two runs on the same axes
    repae analyze sd-vae-ft-mse/ e2e-vae/ --data imagenet/val --num-images 10000 --encoder dinov2-vit-b \\
        --encoder-weights dinov2_vitb14_pretrain.pth
    repae analyze runs/x --fd-samples 5000                     # also FD per checkpoint (offline net)

Writes ``analysis.json`` (every number) and one PNG + JSON per figure (``repae.analysis.plots``).
Definitions: ``docs/analysis.md``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from repae.cli.argtypes import finite_float, nonneg_int, positive_int
from repae.cli.common import default_device
from repae.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="RUN_OR_VAE",
                        help="run folder, checkpoint folder (step-XXXXXXX), exported / diffusers VAE folder, or a "
                        "VAE weights file (.safetensors/.pt/.ckpt, with --vae-preset)")
    parser.add_argument("--data", default=None,
                        help="images (read like training data: embedded[:split], fashion-mnist[:split], folder, .npz, "
                        ".h5); default: the first run's data source (test split), else embedded:test")
    parser.add_argument("--resolution", type=positive_int, default=None,
                        help="image side (default: the runs' training resolution, else 32 for Fashion-MNIST, the stored side of .npz/.h5 images, 256)")
    parser.add_argument("--num-images", type=positive_int, default=1000,
                        help="n: images measured; CKNNA builds n x n kernels (default 1000: seconds on a CPU for the "
                        "embedded default; 10000 takes minutes on one GPU)")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/analysis for one run, else ./analysis)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--checkpoints", choices=["all", "latest"], default="all",
                        help="which checkpoints of a run to measure (pictures always use the latest)")
    parser.add_argument("--vae-preset", default=None, help="architecture of a VAE weights file (f8d4, f16d32, ...)")
    parser.add_argument("--seed", type=int, default=0, help="image subset and diffusion noise")
    parser.add_argument("--grid", type=positive_int, default=8, help="images in the picture grids")
    c = parser.add_argument_group("CKNNA (spec-related-methods.md 4)")
    c.add_argument("--encoder", default=None,
                   help="frozen encoder (default: the run's first alignment encoder, else repae-vit-t4 at 32 px / "
                   "dinov2-vit-b)")
    c.add_argument("--encoder-weights", default=None, help="weights of --encoder (default: env var / packaged)")
    c.add_argument("--t", type=finite_float, default=0.5, help="noise level of the generator input (0 data, 1 noise): "
                   "the flow time; for a DiT, the DDPM timestep with the same noise-to-signal ratio")
    c.add_argument("--pool", choices=["mean", "tokens"], default="mean", help="token pooling (mean = published)")
    c.add_argument("--k", type=positive_int, default=10, help="nearest neighbours (REPA / REPA-E: 10)")
    c.add_argument("--no-cknna", action="store_true", help="skip CKNNA (no encoder needed)")
    f = parser.add_argument_group("FD per checkpoint (default: read from evaluation JSONs in the run folder)")
    f.add_argument("--fd-samples", type=nonneg_int, default=0, help="draw this many samples per checkpoint and compute FD")
    f.add_argument("--reference", default=None, help="FD reference (.npz or image source; default embedded:train)")
    f.add_argument("--inception-weights", default=None, help="ADM Inception weights (default: offline evalnet-fmnist)")


def _resolution(args, sources) -> int:
    from repae.data import default_resolution

    trained = {s.config.data.resolution: s.label for s in sources if s.config is not None}
    if len(trained) > 1:
        raise ConfigError(f"the runs were trained at different resolutions ({', '.join(map(str, trained))} px); "
                          "run repae analyze once per resolution")
    if trained:
        (res, label), = trained.items()
        if args.resolution is not None and args.resolution != res:
            raise ConfigError(f"run '{label}' was trained at {res} px but --resolution is {args.resolution}; "
                              f"drop --resolution or pass {res}")
        return res
    return args.resolution or default_resolution(args.data or "embedded:test")


def _check_vae_resolution(sources, resolution: int, vae_preset: str | None) -> None:
    """VAE / data resolution mismatch -> one line, before any image is read."""
    from repae.tokenizer.registry import read_folder_arch, tokenizer_arch
    from repae.tokenizer.vae import get_vae_config

    for s in sources:
        if s.config is not None:
            factor = tokenizer_arch(s.config.tokenizer).downsample_factor
        elif s.path.is_dir():
            found = read_folder_arch(s.path)
            if found is None:
                raise ConfigError(f"'{s.spec}' is a folder without a VAE config.json (nor vae/config.json); pass a run folder, "
                                  "a VAE folder written by export-vae / save_pretrained, or a weights file with --vae-preset")
            factor = found[1].downsample_factor
        elif vae_preset is not None:
            factor = get_vae_config(vae_preset).downsample_factor
        else:
            raise ConfigError(f"'{s.spec}' is a weights file: pass --vae-preset (f8d4, f16d32, tiny-f4d4, tiny-f8d4)")
        if resolution % factor:
            raise ConfigError(f"VAE '{s.label}' downsamples by {factor} but the images are {resolution} px; pass "
                              f"--resolution as a multiple of {factor} (e.g. {max(factor, resolution // factor * factor)})")


def _encoder(args, sources, resolution: int, device):
    from repae.encoders import load_encoder
    from repae.errors import MissingWeightsError

    if args.no_cknna:
        return None, None
    name, weights = args.encoder, args.encoder_weights
    if name is None:
        run = next((s for s in sources if s.config is not None and s.config.align.encoders), None)
        if run is not None:
            name = run.config.align.encoders[0]
            if weights is None and run.config.align.encoder_weights:
                weights = run.config.align.encoder_weights[0]
        else:
            name = "repae-vit-t4" if resolution == 32 else "dinov2-vit-b"
    try:
        return load_encoder(name, weights=weights, resolution=resolution, device=device), name
    except MissingWeightsError as err:
        if args.encoder is not None:
            raise
        print(f"warning: CKNNA skipped ({err}); pass --encoder/--encoder-weights or --no-cknna")
        return None, None


def _fd_function(args, device):
    """Callback ``checkpoint -> FD`` with ``--fd-samples`` samples (same protocol as ``repae evaluate``)."""
    if args.fd_samples <= 0:
        return None
    from repae.cli.common import image_source, load_generator, resolve_sampling
    from repae.cli.evaluate import DEFAULT_OFFLINE_REFERENCE, sample_stream
    from repae.evaluation.features import get_extractor
    from repae.evaluation.reference import compute_reference, evaluate_samples, load_reference
    from repae.sampling.generator import sample_labels

    extractor = get_extractor(None, inception_weights=args.inception_weights, device=device)
    reference = args.reference or DEFAULT_OFFLINE_REFERENCE
    if reference.endswith(".npz"):
        ref = load_reference(reference, extractor, batch_size=args.batch_size, progress=False)
    else:
        ref = compute_reference(image_source(reference, resolution=args.resolution, split="train"), extractor,
                                batch_size=args.batch_size, progress=False)

    def fd(ckpt: Path) -> float:
        gen = load_generator(str(ckpt), ema=True, device=device)
        call = resolve_sampling(argparse.Namespace(), gen.sample_defaults)
        labels = sample_labels(args.fd_samples, args.seed, gen.num_classes)
        stream = sample_stream(gen, labels, batch_size=args.batch_size, seed=args.seed, call_kwargs=call)
        return float(evaluate_samples(stream, ref, extractor, batch_size=args.batch_size, progress=False)["fid"])

    return fd


def run(args: argparse.Namespace) -> int:
    from repae.analysis.pipeline import AnalysisOptions, analyze, load_images, resolve_sources, strip_tensors
    from repae.analysis.plots import write_figures
    from repae.utils.io import write_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.num_images < 4:
        raise ConfigError(f"--num-images must be >= 4 (CKNNA's unbiased HSIC), got {args.num_images}")
    if not 0.0 <= args.t <= 1.0:
        raise ConfigError(f"--t must be in [0, 1] (0 data, 1 noise), got {args.t}")
    if args.out:
        from repae.utils.io import check_output_path

        check_output_path(args.out, folder=True, what="--out")  # before the work, not after it
    sources = resolve_sources(args.inputs)
    resolution = _resolution(args, sources)
    _check_vae_resolution(sources, resolution, args.vae_preset)
    device = default_device(args.device)
    data_spec = args.data
    if data_spec is None:
        run_src = next((s for s in sources if s.config is not None), None)
        data_spec = run_src.config.data.source if run_src is not None else "embedded:test"
    data = load_images(data_spec, resolution=resolution, num_images=args.num_images, seed=args.seed)
    encoder, encoder_name = _encoder(args, sources, resolution, device)
    options = AnalysisOptions(num_images=args.num_images, batch_size=args.batch_size, t=args.t, pool=args.pool,
                              k=args.k, grid=args.grid, seed=args.seed, checkpoints=args.checkpoints,
                              vae_preset=args.vae_preset)
    result = analyze(sources, data, device=device, options=options, encoder=encoder, encoder_name=encoder_name,
                     fd_fn=_fd_function(args, device))
    if args.out:
        out = Path(args.out)
    elif len(sources) == 1 and sources[0].kind == "run":
        out = sources[0].path / "analysis"
    else:
        out = Path("analysis")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "analysis.json", strip_tensors(result))
    figures = write_figures(result, out, class_names=data.class_names)
    for r in result["inputs"]:
        st = r["stats"]["raw"]
        ck = r.get("cknna_at_depth")
        print(f"{r['label']}: SV {st['spatial_variance']:.4g} | TV {st['total_variation']:.4g} | "
              f"TV/sqrt(SV) {st['tv_over_sqrt_sv']:.3f} | image variance {st['image_variance']:.4g} "
              f"({st['image_variance_fraction']:.3f} of SV)" + (f" | CKNNA@depth {ck:.3f}" if ck is not None else "")
              + (f" | latent CKNNA {r['latent_cknna']:.3f}" if r.get("latent_cknna") is not None else ""))
    print(f"wrote {out / 'analysis.json'} and {len(figures)} figures to {out}")
    return 0
