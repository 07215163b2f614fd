"""``repae study``: the paper's claims checked at equal budget, resumably, with an honest report.

* :mod:`repae.study.plan` -- the runs as data (name, recipe, overrides, tables) and the cost model;
* :mod:`repae.study.claims` -- the paper's claims and the pure rule that marks them from per-seed numbers;
* :mod:`repae.study.measure` -- the identical evaluation of every run and the per-run results;
* :mod:`repae.study.run` -- resumable execution (``--only`` / ``--shard`` for parallel processes);
* :mod:`repae.study.targets` -- ``--extra targets``: the random target's weights, the targets' linear probes;
* :mod:`repae.study.report` -- ``report.html``, ``report.md``, ``results.json``.

Python::

    from repae.study import StudyConfig, run_study
    run_study(StudyConfig(out="study"))

The package sits above training, sampling, evaluation and analysis and below the CLI
(``pyproject.toml`` layers).
"""

from __future__ import annotations

from repae.study.plan import StudyConfig, build_plan

__all__ = ["StudyConfig", "build_plan", "run_study"]


def run_study(cfg: StudyConfig, **kwargs):
    """:func:`repae.study.run.run_study` (imported on use: building a plan stays cheap)."""
    from repae.study.run import run_study as _run

    return _run(cfg, **kwargs)
