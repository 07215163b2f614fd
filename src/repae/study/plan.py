"""The study as data: every run (name, recipe, overrides, which table and claim it feeds) and its cost.

``repae study`` trains REPA-E against its baselines and the paper's ablations at one number of
steps, one batch size and the same seeds, then trains a fresh SiT on each frozen tokenizer. The
rows (``KINDS``) and the seed's tables they fill (``../shared/seed/repa-e-presentation.txt``;
paper = Leng et al. 2025, "REPA-E: Unlocking VAE for End-to-End Tuning with Latent Diffusion
Transformers"):

==================  ==============  ==========  =======  ======================================
kind                recipe          tokenizer   seeds    tables (seed heading / paper section)
==================  ==============  ==========  =======  ======================================
vanilla             vanilla         VAE init.   all      main, drop-in ("SD-VAE, REPA x")
repa                repa            VAE init.   all      main, iterations, collapse ("w/o E2E
                                                         tuning"), drop-in, tokenizer
repa-e              repa-e          VAE init.   all      main, iterations, ablation, collapse,
                                                         tokenizer; exports the E2E-VAE
repa-e-scratch      vae-scratch     random      ablation iterations ("REPA-E (scratch)", sec. 4)
e2e-diffusion       e2e-diffusion   VAE init.   ablation collapse ("E2E w/ Diff. Loss", sec. 3.1)
no-stopgrad         no-stopgrad     VAE init.   ablation ablation ("w/o stopgrad", Table 6)
no-normalizer       no-normalizer   VAE init.   ablation ablation ("w/o batch-norm", Table 6)
no-lreg             no-lreg         VAE init.   ablation ablation ("w/o L_REG", Table 6)
dropin-vanilla      vanilla         E2E-VAE     all      drop-in ("E2E-VAE, REPA x", sec. 4.3)
dropin-repa         repa            E2E-VAE     all      drop-in, tokenizer ("E2E-VAE, REPA v")
==================  ==============  ==========  =======  ======================================

"VAE init." is the study's starting tokenizer (``StudyConfig.tokenizer``, default the shipped
``repae-vae-fmnist``: the embedded analogue of SD-VAE). The drop-in rows use the E2E-VAE that the
``repa-e`` run of the same seed exported (``<run>/e2e-vae``), frozen; their "initial tokenizer"
counterparts are the ``repa`` and ``vanilla`` rows themselves (a frozen VAE init. with and without
REPA is exactly those runs), so the drop-in table costs two runs per seed, not four.

``--extra rae`` (issue 23) adds a representation autoencoder beside REPA-E: ``rae-decoder`` trains
the decoder of the frozen ``repae-vit-t4`` (the settings of preset ``tiny-fmnist-rae``) and exports
it; ``rae`` trains the study's SiT with RAE's DiT^DH head and dimension-shifted schedule on its
frozen latents (``tiny-fmnist-rae-sit-dh``), evaluated like every other row.

``--extra targets`` (issue 21 item 2, REPA's "better encoder, better generation" at laptop scale)
adds one REPA row per alignment target, each naming its target explicitly (``align.encoders`` and
``align.encoder_weights``, applied after ``--set`` so that no override can make two targets equal):
a random ``repae-vit-t4`` (seeded init, written once to ``<out>/targets/`` by
:mod:`repae.study.targets`), the shipped MAE ``repae-vit-t4`` and the shipped SimCLR ``repae-cnn-p4``.
:mod:`repae.study.targets` also probes each target once per study (``<out>/targets.json``).

Budget of the default (``small``) study. :func:`estimate_seconds` predicts each run from
:data:`STEP_COST` (``repae bench`` seconds per step of each recipe at batch 64, one thread, preset
``fmnist``, AMD EPYC reference machine, 2026-12-06), :data:`SAMPLE_COST` and :data:`RUN_OVERHEAD`:
about 302 min for the 20 runs of 960 steps, ~150 per shard (not yet run as a whole). The first
study (SiT-T, 240 steps, 15 runs) was predicted at 62 min and measured at 43 min wall as two
one-thread shards; the progress lines rescale the ETA with the measured/predicted ratio of the
finished runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from repae.errors import ConfigError

BUDGETS = ("small", "paper")


@dataclass(frozen=True)
class Kind:
    """One row of the study (repeated per seed)."""

    recipe: str  # repae.training.recipes name
    label: str  # row label in the seed's tables
    # "init" (StudyConfig.tokenizer) | "scratch" (recipe ignores weights) | "e2e" (the repa-e run's export)
    # | "run:<kind>" (the tokenizer exported by that row's run of the same seed)
    tokenizer: str
    seeds: str  # "all" (StudyConfig.seeds) | "ablation" (StudyConfig.ablation_seeds)
    tables: tuple[str, ...]
    overrides: tuple[str, ...] = ()  # this row's own run overrides (e.g. a tokenizer regulariser)
    family: str = "SiT"  # generator: "SiT" (the preset's) | "DiT" (same size and patch) | "" (tokenizer only)
    target: str = ""  # --extra targets: the row's alignment encoder (registry name; "" = the preset's)
    target_weights: str = ""  # "" = that encoder's packaged weights | "random" = seeded init (target_weights_path)

    @property
    def source(self) -> str | None:
        """The row whose exported tokenizer this row trains on (None: not an exported one)."""
        if self.tokenizer == "e2e":
            return "repa-e"
        return self.tokenizer[4:] if self.tokenizer.startswith("run:") else None


#: the RAE rows' tokenizer (preset tiny-fmnist-rae) and generator head / schedule (tiny-fmnist-rae-sit-dh), as
#: overrides of the study's preset; the decoder row drops the study's VAE weights (its encoder is frozen, its
#: decoder starts from scratch), the generator row then reads the decoder row's exported RAE folder
RAE_TOKENIZER: tuple[str, ...] = ("tokenizer.preset=rae", "tokenizer.rae_encoder=repae-vit-t4", "tokenizer.rae_decoder=ViT-T",
                                  "tokenizer.rae_noise_tau=0.8", "lreg.kl_weight=0.0", "optim.vae_lr=5.0e-4")
RAE_GENERATOR: tuple[str, ...] = ("model.dh_depth=2", "model.dh_width=384", "model.dh_heads=6",
                                  "diffusion.time_shift=dimension", "diffusion.time_shift_base=4096")

#: kind -> row, in run order (a drop-in row follows the repa-e run it depends on)
KINDS: dict[str, Kind] = {
    "vanilla": Kind("vanilla", "SiT (vanilla)", "init", "all", ("main", "dropin")),
    "repa": Kind("repa", "REPA", "init", "all", ("main", "iterations", "collapse", "dropin", "tokenizer")),
    "repa-e": Kind("repa-e", "REPA-E (VAE init.)", "init", "all",
                   ("main", "iterations", "ablation", "collapse", "tokenizer")),
    "dropin-vanilla": Kind("vanilla", "E2E-VAE + SiT (vanilla)", "e2e", "all", ("dropin",)),
    "dropin-repa": Kind("repa", "E2E-VAE + REPA", "e2e", "all", ("dropin", "tokenizer")),
    "repa-e-scratch": Kind("vae-scratch", "REPA-E (scratch)", "scratch", "ablation", ("iterations",)),
    "e2e-diffusion": Kind("e2e-diffusion", "E2E w/ Diff. Loss", "init", "ablation", ("collapse",)),
    "no-stopgrad": Kind("no-stopgrad", "w/o stopgrad", "init", "ablation", ("ablation",)),
    "no-normalizer": Kind("no-normalizer", "w/o batch-norm", "init", "ablation", ("ablation",)),
    "no-lreg": Kind("no-lreg", "w/o L_REG", "init", "ablation", ("ablation",)),
    # --extra dit: the DiT half of the drop-in table (seed 'The impact of end-to-end tuning')
    "dit": Kind("vanilla", "DiT (vanilla)", "init", "ablation", ("dropin",), family="DiT"),
    "dit-repa": Kind("repa", "DiT + REPA", "init", "ablation", ("dropin",), family="DiT"),
    "dropin-dit": Kind("vanilla", "E2E-VAE + DiT (vanilla)", "e2e", "ablation", ("dropin",), family="DiT"),
    "dropin-dit-repa": Kind("repa", "E2E-VAE + DiT + REPA", "e2e", "ablation", ("dropin",), family="DiT"),
    # --extra tokreg: the tokenizer regularisers (docs/tokenizer-regularisers.md): VAE init. fine-tuned
    # for the same steps with L_REG alone (the control) or + SE / EQ-VAE / VF loss, then a fresh vanilla
    # SiT on each frozen result, beside the vanilla rows on VAE init. and on the E2E-VAE
    "tok-base": Kind("vae", "L_REG fine-tune", "init", "ablation", ("tokreg",), family=""),
    "tok-se": Kind("vae", "+ SE", "init", "ablation", ("tokreg",), ("tokreg.se_weight=0.25",), family=""),
    "tok-eq": Kind("vae", "+ EQ-VAE", "init", "ablation", ("tokreg",),
                   ("tokreg.eq_prob=0.5", "tokreg.eq_min_scale=0.75"), family=""),
    "tok-vf": Kind("vae", "+ VF loss", "init", "ablation", ("tokreg",), ("tokreg.vf_weight=0.1",), family=""),
    "tokreg-base": Kind("vanilla", "L_REG fine-tune + SiT", "run:tok-base", "ablation", ("tokreg",)),
    "tokreg-se": Kind("vanilla", "SE fine-tune + SiT", "run:tok-se", "ablation", ("tokreg",)),
    "tokreg-eq": Kind("vanilla", "EQ-VAE fine-tune + SiT", "run:tok-eq", "ablation", ("tokreg",)),
    "tokreg-vf": Kind("vanilla", "VF-loss fine-tune + SiT", "run:tok-vf", "ablation", ("tokreg",)),
    # --extra targets: REPA with alignment targets of different linear-probe accuracy (repae.study.targets);
    # the vanilla row is the no-target reference of the figure
    "target-random": Kind("repa", "REPA, random ViT target", "init", "ablation", ("targets",),
                          target="repae-vit-t4", target_weights="random"),
    "target-vit": Kind("repa", "REPA, MAE ViT target", "init", "ablation", ("targets",),
                       target="repae-vit-t4"),
    "target-cnn": Kind("repa", "REPA, SimCLR CNN target", "init", "ablation", ("targets",),
                       target="repae-cnn-p4"),
    # --extra rae: a representation autoencoder (RAE, Zheng et al. 2025; docs/tokenizers.md) beside REPA-E: the
    # decoder of the frozen repae-vit-t4 (preset tiny-fmnist-rae's settings), then the study's generator with
    # RAE's DiT^DH head and dimension-shifted schedule (tiny-fmnist-rae-sit-dh) on its frozen latents
    "rae-decoder": Kind("rae-decoder", "RAE decoder (frozen repae-vit-t4)", "scratch", "ablation", ("rae",),
                        RAE_TOKENIZER, family=""),
    "rae": Kind("vanilla", "RAE + SiT DiT^DH (vanilla)", "run:rae-decoder", "ablation", ("rae",),
                RAE_TOKENIZER + RAE_GENERATOR),
}

#: the rows of the default study (issue: REPA-E vs baselines, ablations, SiT drop-in)
DEFAULT_KINDS: tuple[str, ...] = ("vanilla", "repa", "repa-e", "dropin-vanilla", "dropin-repa", "repa-e-scratch",
                                  "e2e-diffusion", "no-stopgrad", "no-normalizer", "no-lreg")
#: ``repae study --extra NAME``: rows added to the default ones (one seed each, like the ablations)
EXTRAS: dict[str, tuple[str, ...]] = {
    "dit": ("dit", "dit-repa", "dropin-dit", "dropin-dit-repa"),
    "tokreg": ("tok-base", "tok-se", "tok-eq", "tok-vf", "tokreg-base", "tokreg-se", "tokreg-eq", "tokreg-vf"),
    "targets": ("target-random", "target-vit", "target-cnn"),
    "rae": ("rae-decoder", "rae"),
}
#: seed of the random alignment target's init (its weights file is fixed by it: a stable run fingerprint)
RANDOM_TARGET_SEED = 0

#: seconds per training step at batch 64, one thread of the 2-core reference machine (module docstring)
STEP_COST: dict[str, float] = {  # `repae bench --threads 1 --steps 5 --warmup 1 train.recipe=R`, median of 5,
    # preset fmnist (SiT-XS/1, repae-cnn-p4, bf16), two one-thread benches side by side, 2026-12-06
    "repa-e": 1.25, "vae-scratch": 1.31, "no-normalizer": 1.25, "no-stopgrad": 1.27, "e2e-diffusion": 1.15,
    "no-lreg": 0.74, "repa": 0.55, "vanilla": 0.44, "vae": 0.68,
    "rae-decoder": 0.68,  # not benched: the vae recipe's cost (ViT-T decoder + PatchGAN, frozen ViT-T encoder)
}
#: REPA head width of the small study's runs (0 = the preset's 2048); see build_plan
SMALL_PROJECTOR = 0  # the preset's head (512 on SiT-XS; the 256 pin of SiT-T's 2048 head is gone)
SAMPLE_COST = 0.05  # seconds per generated image, 25 solver steps, no CFG (SiT-XS/1, bf16, 32 px, 1 thread, 2026-12-06)
RUN_OVERHEAD = 15.0  # seconds per run: build, rFID on the test split, latent analysis, checkpoint I/O


@dataclass
class StudyConfig:
    """Everything that defines a study; runs made with other values are never mixed into one report."""

    out: str = "study"  # study folder: runs/, report.{html,md}, results.json, figures/
    budget: str = "small"  # small (run it here) | paper (print the ImageNet command lines)
    seeds: int = 3  # seeds of the rows marked "all" (REPA-E vs REPA vs vanilla, drop-in)
    ablation_seeds: int = 1  # seeds of the other rows; their spread is borrowed (repae.study.claims)
    steps: int = 960  # 4x the first study's 240 (issue 21: a budget at which the curves separate)
    batch_size: int = 64
    tokenizer: str = "repae-vae-fmnist"  # "VAE init.": registry name, tokenizer folder or weights file
    preset: str = "fmnist"  # base config of every run (the main job's setting)
    overrides: tuple[str, ...] = ()  # dotted overrides applied to every run, after the study's own
    kinds: tuple[str, ...] = DEFAULT_KINDS  # which rows to plan (KINDS keys; EXTRAS adds more)
    eval_every: int = 240  # FD-vs-step points (and checkpoints) every this many steps
    curve_samples: int = 500  # samples per FD-vs-step point (more than the 256 feature dimensions)
    eval_samples: int = 1000  # samples of the final evaluation; also images for rFID
    sampler: str = "euler"
    sample_steps: int = 25
    cfg_scale: float = 1.0  # the paper's comparison tables are without guidance
    eval_seed: int = 0  # labels and noise of the evaluation samples: identical for every run
    reference: str = "embedded:train"  # FD reference images (or an .npz made by `repae reference`)
    recon_data: str = "embedded:test"  # rFID / PSNR images
    analysis_data: str = "embedded:test"  # spatial variance / TV / CKNNA / PCA images
    analysis_images: int = 256
    threads: int = 0  # torch CPU threads per run (0 = torch default)

    def check(self) -> None:
        """One line naming the fix for every unusable value."""
        if self.budget not in BUDGETS:
            raise ConfigError(f"--budget {self.budget!r}: choose one of {', '.join(BUDGETS)}")
        for name in ("seeds", "ablation_seeds", "steps", "batch_size", "eval_every", "curve_samples",
                     "eval_samples", "sample_steps", "analysis_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"study {name}={value!r} must be a positive integer")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ConfigError(f"study threads={self.threads!r} must be an integer >= 0 (0 = torch default)")
        if self.cfg_scale < 1.0:
            raise ConfigError(f"study cfg_scale={self.cfg_scale} must be >= 1 (1 = no guidance)")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ConfigError(f"unknown study row(s) {', '.join(unknown)}; choose from: {', '.join(KINDS)}")
        if self.budget == "paper" and any(KINDS[k].target for k in self.kinds):
            raise ConfigError("--extra targets runs at --budget small only (its targets are the 32x32 Fashion-MNIST "
                              "encoders repae-vit-t4 / repae-cnn-p4); drop it from the paper study")
        if self.budget == "paper" and any(KINDS[k].recipe == "rae-decoder" or KINDS[k].source == "rae-decoder"
                                          for k in self.kinds):
            raise ConfigError("--extra rae runs at --budget small only (its encoder is the 32x32 repae-vit-t4); for "
                              "ImageNet train the presets imagenet-rae-dinov2b then imagenet-rae-dit-dh-xl")
        for text in self.overrides:
            if "=" not in text or "." not in text.split("=", 1)[0]:
                raise ConfigError(f"--set {text!r} must look like section.key=value (e.g. train.threads=1)")
        if self.overrides:  # a bad key or value fails here, not when the first run starts (or never: --dry-run)
            from repae.config import check_ranges, load_config

            try:
                check_ranges(load_config(self.preset, list(self.overrides)))
            except ConfigError as err:
                raise ConfigError(f"--set: {err}") from None

    @property
    def curve_n(self) -> int:
        """Samples per FD-vs-step point (never more than the final evaluation's)."""
        return min(self.curve_samples, self.eval_samples)

    def settings(self) -> dict:
        """The values a run's results depend on (its fingerprint, without the folder)."""
        d = dataclasses.asdict(self)
        for k in ("out", "budget", "seeds", "ablation_seeds", "kinds", "threads"):
            d.pop(k)
        d["overrides"] = list(self.overrides)
        return d


@dataclass(frozen=True)
class RunSpec:
    """One run of the plan: a ``repae`` run folder ``<out>/runs/<name>``."""

    name: str  # "<kind>-s<seed>"
    kind: str
    recipe: str
    seed: int
    label: str
    tables: tuple[str, ...]
    overrides: tuple[str, ...]  # everything on top of the preset, in order
    depends_on: str | None = None  # run whose exported E2E-VAE is this run's tokenizer
    exports_vae: bool = False

    def run_dir(self, out: str | Path) -> Path:
        return Path(out) / "runs" / self.name

    def fingerprint(self, cfg: StudyConfig) -> str:
        """Hash of everything the run's numbers depend on (output folder and thread count excluded).

        It includes the *resolved* run config, not only the preset's name: editing the preset file
        (e.g. a new default encoder) makes every finished run of an older study stale instead of
        silently mixing settings in one report. Keys added to the config since the first studies
        are left out while they hold their neutral value (:data:`repae.config.ADDED`), so a new
        switch that is off by default keeps an older study's finished runs valid."""
        return self._hash(cfg, neutral_added=False)

    def fingerprints(self, cfg: StudyConfig) -> tuple[str, str]:
        """Every fingerprint a finished run of these settings may carry: :meth:`fingerprint`, then the
        form of 2026-12-06 13:26 to 16:00 UTC, which hashed the neutral added keys too (the RAE rows)."""
        return self.fingerprint(cfg), self._hash(cfg, neutral_added=True)

    def _hash(self, cfg: StudyConfig, *, neutral_added: bool) -> str:
        from repae.config import load_config

        keep = [o for o in self.overrides if not o.startswith(("train.output_dir=", "train.threads="))]
        resolved = load_config(cfg.preset, keep).to_dict()
        for key in ("output_dir", "threads"):
            resolved["train"].pop(key, None)
        # files inside the study folder (a drop-in row's E2E-VAE, the random target's weights) are named
        # relative to it, so that a study moved or copied elsewhere keeps its finished runs
        inside = str(Path(cfg.out)) + "/"

        def rel(v):
            return v.replace(inside, "<study>/") if isinstance(v, str) and inside in v else v

        keep = [rel(o) for o in keep]
        resolved["tokenizer"]["weights"] = rel(resolved["tokenizer"].get("weights"))
        resolved["align"]["encoder_weights"] = [rel(w) for w in resolved["align"].get("encoder_weights") or []]
        if not neutral_added:
            resolved = _without_neutral_added_keys(resolved)
        settings = cfg.settings()
        settings["overrides"] = [_override_before_renames(o) for o in settings["overrides"]]
        payload = {"preset": cfg.preset, "overrides": [_override_before_renames(o) for o in keep], "eval": settings,
                   "resolved": _config_before_renames(resolved)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# A fingerprint hashes the config under the key names it had before the renames of CHANGELOG.md
# 2026-12-06 (2) (repae.config.RENAMED): a rename changes no setting, so it leaves finished runs valid.
def _old_name(dotted: str) -> str:
    from repae.config import RENAMED, RENAMED_SECTIONS

    back = {new: old for old, new in RENAMED.items()}
    if dotted in back:
        return back[dotted]
    section, _, rest = dotted.partition(".")
    sections = {new: old for old, new in RENAMED_SECTIONS.items()}
    return f"{sections[section]}.{rest}" if section in sections else dotted


def _override_before_renames(text: str) -> str:
    name, eq, value = text.partition("=")
    return f"{_old_name(name.strip())}{eq}{value}" if eq else text


def _without_neutral_added_keys(resolved: dict) -> dict:
    """``resolved`` without the keys of :data:`repae.config.ADDED` that hold their neutral value."""
    from repae.config import ADDED

    out = {section: dict(values) for section, values in resolved.items()}
    for dotted, neutral in ADDED.items():
        section, name = dotted.split(".", 1)
        if section in out and name in out[section] and out[section][name] == neutral:
            del out[section][name]
    return out


def _config_before_renames(resolved: dict) -> dict:
    out: dict = {}
    for section, values in resolved.items():
        for name, value in values.items():
            old_section, old_name = _old_name(f"{section}.{name}").split(".", 1)
            out.setdefault(old_section, {})[old_name] = value
    return out


@dataclass
class Plan:
    config: StudyConfig
    runs: list[RunSpec] = field(default_factory=list)

    def names(self) -> list[str]:
        return [r.name for r in self.runs]

    def get(self, name: str) -> RunSpec:
        for r in self.runs:
            if r.name == name:
                return r
        raise ConfigError(f"no run named {name!r} in this study; choose from: {', '.join(self.names())}")

    def by_kind(self) -> dict[str, list[RunSpec]]:
        out: dict[str, list[RunSpec]] = {}
        for r in self.runs:
            out.setdefault(r.kind, []).append(r)
        return out

    def select(self, only: list[str] | None = None, shard: tuple[int, int] | None = None) -> list[RunSpec]:
        """The runs one process executes: ``only`` names (bad name: ConfigError) and/or shard ``(i, n)``
        (1-based). A run lands in the same shard as the run it depends on, so each shard can finish."""
        runs = list(self.runs)
        if only:
            wanted = [n.strip() for item in only for n in item.split(",") if n.strip()]
            for n in wanted:
                self.get(n)  # one line listing the valid names
            runs = [r for r in runs if r.name in wanted]
        if shard is not None:
            mine = set(self.shards(shard[1])[shard[0] - 1])
            runs = [r for r in runs if r.name in mine]
        return runs

    def shards(self, n: int) -> list[list[str]]:
        """Run names of each of ``n`` shards: a run and the drop-in runs that need its E2E-VAE form one
        group; groups go, most expensive first, to the shard with the least estimated time so far."""
        groups: dict[str, list[RunSpec]] = {}
        for r in self.runs:
            groups.setdefault(r.depends_on or r.name, []).append(r)
        cost = {root: sum(estimate_seconds(r, self.config)["total"] for r in g) for root, g in groups.items()}
        order = sorted(groups, key=lambda root: -cost[root])  # stable: plan order among equal costs
        load, names = [0.0] * n, [[] for _ in range(n)]
        for root in order:
            j = min(range(n), key=lambda s: load[s])
            load[j] += cost[root]
            names[j].extend(r.name for r in groups[root])
        return [[r.name for r in self.runs if r.name in set(s)] for s in names]  # plan order within a shard


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (1 <= i <= n) -> ``(i, n)``."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r} must look like i/n, e.g. --shard 1/2 and --shard 2/2") from None
    if not 1 <= i <= n:
        raise ConfigError(f"--shard {text!r}: need 1 <= i <= n (e.g. --shard 1/2 and --shard 2/2)")
    return i, n


def _seeds(cfg: StudyConfig, kind: Kind) -> range:
    return range(cfg.seeds if kind.seeds == "all" else min(cfg.ablation_seeds, cfg.seeds))


def build_plan(cfg: StudyConfig) -> Plan:
    """The runs of ``cfg`` in execution order (each drop-in run after its repa-e run)."""
    cfg.check()
    out = Path(cfg.out)
    plan = Plan(cfg)
    kinds = [k for k in KINDS if k in cfg.kinds]
    for k in kinds:
        src = KINDS[k].source
        if src is not None and src not in kinds:
            raise ConfigError(f"study row {k} trains on the tokenizer exported by row {src}: add {src} to the "
                              f"study rows or drop {k}")
    common = [f"train.output_dir={out / 'runs'}", f"train.max_steps={cfg.steps}",
              f"train.batch_size={cfg.batch_size}", f"train.checkpoint_every={cfg.eval_every}"]
    if cfg.budget == "small":  # only what the study reads: no preview grids, diagnostics or per-run pages
        # SMALL_PROJECTOR (0): the preset's REPA head; the first study pinned 256 on SiT-T, whose 2048-wide
        # head was ~85 % of a CPU REPA step (docs/study.md)
        common += [f"model.projector_dim={SMALL_PROJECTOR}"] if SMALL_PROJECTOR else []
        common += ["train.keep_checkpoints=1", "train.sample_every=0", "train.diagnostics_every=0",
                   "train.html_report=false", "train.report_to=none", "train.resume=true",
                   "train.final_eval_samples=0"]  # the study evaluates every run itself
    else:  # every checkpoint is kept: FD vs step evaluates each one
        common += ["train.keep_checkpoints=0"]
    if cfg.threads:
        common.append(f"train.threads={cfg.threads}")
    per_seed: dict[int, list[RunSpec]] = {}
    for k in kinds:
        kind = KINDS[k]
        for seed in _seeds(cfg, kind):
            name = f"{k}-s{seed}"
            depends = f"{kind.source}-s{seed}" if kind.source else None
            if kind.tokenizer == "init":
                tok = [f"tokenizer.weights={cfg.tokenizer}"]
            elif depends:
                tok = [f"tokenizer.weights={out / 'runs' / depends / 'e2e-vae'}"]
            elif kind.recipe == "rae-decoder":
                tok = ["tokenizer.weights=null"]  # frozen encoder by name; the decoder starts from scratch
            else:
                tok = []  # vae-scratch ignores tokenizer.weights; the normaliser starts from data statistics
            overrides = (*common, f"train.recipe={kind.recipe}", f"train.seed={seed}", f"train.exp_name={name}",
                         *tok, *kind.overrides, *cfg.overrides, *_family_overrides(cfg, kind.family),
                         *_target_overrides(cfg, kind))
            spec = RunSpec(name=name, kind=k, recipe=kind.recipe, seed=seed, label=kind.label, tables=kind.tables,
                           overrides=overrides, depends_on=depends,
                           exports_vae=any(KINDS[j].source == k for j in kinds))
            per_seed.setdefault(seed, []).append(spec)
    # order: seed 0 of every row first (a killed study has one complete seed early), drop-ins after repa-e
    for seed in sorted(per_seed):
        plan.runs.extend(per_seed[seed])
    return plan


def base_model(cfg: StudyConfig) -> str:
    """The generator preset of the study's SiT rows (``model.preset`` of the preset plus overrides)."""
    for o in reversed(cfg.overrides):
        if o.startswith("model.preset="):
            return o.split("=", 1)[1]
    from repae.config import load_config

    return load_config(cfg.preset).model.preset


def _family_overrides(cfg: StudyConfig, family: str) -> list[str]:
    """DiT rows: the DiT of the study's SiT size and patch (``SiT-T/1`` -> ``DiT-T/1``), sampled with DDPM."""
    if family != "DiT":
        return []
    from repae.models import DIT_PRESETS

    sit = base_model(cfg)
    dit = "DiT-" + sit.split("-", 1)[1] if "-" in sit else sit
    if dit not in DIT_PRESETS:
        raise ConfigError(f"the DiT rows need a DiT of the study's model size ({sit} -> {dit}), which does not exist; "
                          f"choose a model with --set model.preset=SiT-XL/2 (patch 2, 4 or 8) or drop --extra dit")
    return [f"model.preset={dit}", "sample.sampler=ddpm"]


def target_weights_path(cfg: StudyConfig, kind: Kind) -> Path | None:
    """Weights file of a target row's alignment encoder: ``<out>/targets/<encoder>-random-seed<N>.safetensors``
    for the random target (inside the study folder, content fixed by :data:`RANDOM_TARGET_SEED`), None for an
    encoder's packaged weights or a row that is not a target row."""
    if kind.target and kind.target_weights == "random":
        return Path(cfg.out) / "targets" / f"{kind.target}-random-seed{RANDOM_TARGET_SEED}.safetensors"
    return None


def _target_overrides(cfg: StudyConfig, kind: Kind) -> list[str]:
    """A target row's alignment target, explicit (not the preset's), last (``--set`` cannot change it)."""
    if not kind.target:
        return []
    path = target_weights_path(cfg, kind)
    return [f"align.encoders=[{kind.target}]", f"align.encoder_weights=[{path if path is not None else ''}]"]


# ---------------------------------------------------------------------------------------------
# Cost model (the budget estimate of the module docstring)
# ---------------------------------------------------------------------------------------------


def curve_points(cfg: StudyConfig) -> list[int]:
    """Steps at which the FD-vs-step curve is measured (every ``eval_every`` and the last step)."""
    pts = list(range(cfg.eval_every, cfg.steps + 1, cfg.eval_every))
    return pts if pts and pts[-1] == cfg.steps else [*pts, cfg.steps]


def estimate_seconds(run: RunSpec, cfg: StudyConfig) -> dict[str, float]:
    """Predicted seconds of one run on the reference machine: training, sampling, the rest."""
    train = cfg.steps * STEP_COST.get(run.recipe, 2.0) * cfg.batch_size / 64
    images = len(curve_points(cfg)) * cfg.curve_samples + cfg.eval_samples
    guided = 2 if cfg.cfg_scale > 1.0 else 1  # CFG doubles the batch of every solver step
    sample = images * SAMPLE_COST * cfg.sample_steps / 25 * guided
    return {"train": train, "sample": sample, "other": RUN_OVERHEAD, "total": train + sample + RUN_OVERHEAD}


# ---------------------------------------------------------------------------------------------
# The same study on ImageNet (--budget paper): command lines only
# ---------------------------------------------------------------------------------------------

#: what the paper-scale study changes (the paper's ablation setting, spec-repae.md 9.2 [unverified]:
#: SiT-L/2, SD-VAE f8d4, DINOv2-B at depth 8, 100K iterations of batch 256, gFID on 50K samples)
PAPER = dict(out="study-imagenet", budget="paper", seeds=1, ablation_seeds=1, steps=100_000, batch_size=256,
             tokenizer="pretrained/sd-vae-ft-mse", preset="imagenet-repae-sit-xl2", overrides=("model.preset=SiT-L/2",),
             eval_every=50_000, eval_samples=50_000, analysis_images=10_000)
PAPER_FILES = {  # files the user supplies (nothing is downloaded)
    "reference": "VIRTUAL_imagenet256_labeled.npz",
    "inception": "pt_inception-2015-12-05-6726825d.pth",
    "val": "/path/to/imagenet/val",
}


def paper_config(**changes) -> StudyConfig:
    """The paper-scale study; ``changes`` (e.g. ``seeds``, ``steps``, ``out``) override :data:`PAPER`."""
    return StudyConfig(**{**PAPER, **{k: v for k, v in changes.items() if v is not None}})


def paper_commands(cfg: StudyConfig, *, gpus: int = 8) -> list[str]:
    """Shell lines that train, sample, evaluate and analyse every run of ``cfg`` on ImageNet, then report."""
    import shlex

    plan = build_plan(cfg)
    out = Path(cfg.out)
    f = PAPER_FILES
    lines = [f"# repae study --budget paper: {len(plan.runs)} runs of {cfg.steps} steps x {cfg.batch_size} images "
             f"({cfg.preset} + {' '.join(cfg.overrides) or 'no overrides'}); supply {f['reference']}, "
             f"{f['inception']}, the ImageNet folders and the weights named in the preset",
             "# run order matters only for dropin-* (they need the exported e2e-vae of repa-e-s<seed>)"]
    for r in plan.runs:
        run_dir = r.run_dir(out)
        step = f"step-{cfg.steps:07d}"
        if r.recipe not in ("repa", "vanilla"):  # the run trains its VAE: `repae train` exported it
            tokenizer = run_dir / "e2e-vae"
        else:  # frozen: the initial tokenizer, or the E2E-VAE it was given
            tokenizer = out / "runs" / r.depends_on / "e2e-vae" if r.depends_on else Path(cfg.tokenizer)
        train = [f"# {r.name}: {r.label} (tables: {', '.join(r.tables)})",
                 f"torchrun --nproc_per_node {gpus} -m repae.cli train --config {cfg.preset} "
                 + " ".join(shlex.quote(o) for o in r.overrides)]
        if not KINDS[r.kind].family:  # tokenizer only: the SiT row trained on its export evaluates it
            lines += train
            continue
        lines += [
            *train,
            f"torchrun --nproc_per_node {gpus} -m repae.cli sample --checkpoint {run_dir} --num-samples "
            f"{cfg.eval_samples} --out-npz {out / 'samples' / r.name}.npz",
            f"repae evaluate --samples {out / 'samples' / r.name}.npz --reference {f['reference']} "
            f"--inception-weights {f['inception']} --out {run_dir / 'eval' / step}.json",
            f"repae evaluate --recon {tokenizer} --data {f['val']} --inception-weights {f['inception']} "
            f"--num-samples {cfg.eval_samples} --out {run_dir / 'eval' / 'recon.json'}",
            f"repae analyze {run_dir} --checkpoints latest --data {f['val']} --num-images {cfg.analysis_images}",
        ]
    lines += [f"# FD vs step: repeat sample + evaluate for each {out}/runs/NAME/checkpoints/step-* "
              f"(writing eval/step-XXXXXXX.json), then:",
              f"repae study --budget paper --report-only --out {out}"]
    return lines
