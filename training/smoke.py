"""RECALIGN_SMOKE=1: every command in a small form, so the docs test can run each one the README and docs/ show.

What it shrinks, and nothing else: training epochs (1), LLM steps (1) and LLM batches (2 examples); the
sequential track's users (the first 2,000); text embeddings (the first 400 texts of a table) and image embeddings
(the first 64 images); the LLM track's user sample (2); the synthetic dataset (120 items, 200 users, unless a size is asked for); and
the benchmarks' own loads (see each). Results of a smoke run are not results: the flag is for checking commands.
"""

from __future__ import annotations

import os

SMOKE_USERS = 2000
SMOKE_TEXTS = 400
SMOKE_LLM_USERS = 2
SMOKE_LLM_BATCH = 2
SMOKE_IMAGES = 64
SMOKE_SYNTHETIC = (120, 200)  # items, users of the synthetic dataset


def smoke() -> bool:
    return os.environ.get("RECALIGN_SMOKE", "").lower() not in ("", "0", "false", "no")


def small(value, smoke_value):
    """`value`, or at most `smoke_value` under RECALIGN_SMOKE (None counts as unbounded)."""
    if not smoke():
        return value
    return smoke_value if value is None else min(value, smoke_value)
