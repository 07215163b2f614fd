"""Hooks: what a training run does besides optimising, injected from above the training layer.

The trainer knows how to take a step, log, checkpoint and resume. Everything else a run does
periodically — preview sample grids (``repae.sampling``), latent-health diagnostics and the HTML
report (``repae.analysis``) — lives in the layer that owns it and is handed to
:class:`~repae.training.trainer.Trainer` as a list of hooks, so the training package never
imports sampling, analysis or CLI code (the layering contract in ``pyproject.toml``).

A hook is any object with these methods (all optional; :class:`TrainHook` gives no-op defaults):

* ``on_start(trainer)`` — after building and resuming, before the first step of this process;
* ``on_step(trainer, step, metrics) -> dict | None`` — called on every rank after each optimiser
  step whose index is a multiple of ``hook.every`` (and after the last step); a returned dict of
  scalars is logged with the step's metrics (to ``metrics.jsonl`` and tensorboard);
* ``on_end(trainer)`` — once after the loop, also when a resumed run had no step left.

``every = 0`` disables ``on_step``. Hooks that write files do it on the main process only
(``trainer.engine.is_main``); hooks that run collective operations must run on every rank.
"""

from __future__ import annotations

from typing import Any, Protocol


class Hook(Protocol):  # pragma: no cover - typing only
    every: int

    def on_start(self, trainer: Any) -> None: ...

    def on_step(self, trainer: Any, step: int, metrics: dict[str, float]) -> dict[str, float] | None: ...

    def on_end(self, trainer: Any) -> None: ...


class TrainHook:
    """No-op base class; subclass and override what the hook needs."""

    every: int = 0

    def on_start(self, trainer: Any) -> None:
        return None

    def on_step(self, trainer: Any, step: int, metrics: dict[str, float]) -> dict[str, float] | None:
        return None

    def on_end(self, trainer: Any) -> None:
        return None


def due(hook: Any, step: int, total: int) -> bool:
    """Whether ``hook.on_step`` runs after ``step`` (its period, and always after the last step)."""
    every = int(getattr(hook, "every", 0) or 0)
    return every > 0 and (step % every == 0 or step == total)
