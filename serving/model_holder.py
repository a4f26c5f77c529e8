"""The published model, swapped atomically when the registry pointer changes; bad models are refused."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.seqrec.checkpoint import load_model

log = logging.getLogger("recalign.serving")


@dataclass
class Loaded:
    model: torch.nn.Module
    name: str
    version: str
    path: str
    loaded_at: float


class ModelHolder:
    def __init__(self, registry_root: Path, n_items: int, poll_seconds: float = 2.0):
        self.pointer = Path(registry_root) / "published.json"
        self.n_items = n_items
        self.poll_seconds = poll_seconds
        self.current: Loaded | None = None
        self.last_error: dict | None = None
        self._seen: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.switches = 0
        self.refusals = 0

    def check(self) -> bool:
        """Load the pointer's model if it changed; keep the old one when the new one is bad."""
        try:
            raw = self.pointer.read_text()
        except FileNotFoundError:
            return False
        if raw == self._seen:
            return False
        self._seen = raw
        try:
            entry = json.loads(raw)
            model, meta = load_model(entry["path"])
            if model.cfg.n_items != self.n_items:
                raise ValueError(f"model scores {model.cfg.n_items} items, the catalogue has {self.n_items}")
            with torch.no_grad():  # a smoke prediction: the model must produce finite scores
                probe = model.full_sort_predict(torch.tensor([[1]]))
            if not torch.isfinite(probe[:, 1:]).all():
                raise ValueError("model produces non-finite scores")
        except Exception as exc:  # noqa: BLE001 - any failure means: refuse and keep serving the old model
            self.refusals += 1
            self.last_error = {"at": time.time(), "pointer": raw[:500], "error": f"{type(exc).__name__}: {exc}"}
            log.error("refused new model: %s (still serving %s)", self.last_error["error"],
                      self.current.version if self.current else None)
            return False
        self.current = Loaded(model, entry["name"], entry["version"], entry["path"], time.time())  # atomic swap
        self.switches += 1
        log.info("serving model %s/%s", entry["name"], entry["version"])
        return True

    def start(self) -> None:
        self.check()
        self._thread = threading.Thread(target=self._watch, name="model-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check()

    def stop(self) -> None:
        self._stop.set()

    @torch.no_grad()
    def scores(self, history: np.ndarray) -> tuple[np.ndarray, Loaded]:
        loaded = self.current  # one reference for the whole request: a switch never mixes models
        if loaded is None:
            raise RuntimeError("no model loaded")
        max_len = loaded.model.cfg.max_len
        seq = torch.from_numpy(np.asarray(history[-max_len:], dtype=np.int64)).view(1, -1)
        return loaded.model.full_sort_predict(seq)[0].numpy(), loaded
