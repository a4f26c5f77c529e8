"""Trainer callbacks, in their own module: transformers' Trainer stack is imported when a stage runs, not by
every process that loads the track's configs (the Dagster definitions)."""

from __future__ import annotations

import time

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Records each optimisation step's wall time (the median goes into the stage summary)."""

    def __init__(self):
        self.times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)
