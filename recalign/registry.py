"""Model registry on the filesystem: immutable versions + one `published.json` pointer swapped atomically.

registry/<dataset>/models/<name>/<version>/   model.safetensors, config.json, card.json
registry/<dataset>/published.json            {"name", "version", "path", "published_at", ...}
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ModelVersion:
    name: str
    version: str
    path: Path
    card: dict

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "path": str(self.path), "card": self.card}


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "models").mkdir(parents=True, exist_ok=True)

    def new_version_dir(self, name: str) -> tuple[str, Path]:
        version = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        return version, self.root / "models" / name / f".incoming-{version}"

    def commit(self, name: str, version: str, staging: Path, card: dict) -> ModelVersion:
        """Write the card, then rename the staging folder into place: a version appears whole or not at all."""
        (staging / "card.json").write_text(
            json.dumps({"name": name, "version": version, **card}, indent=1, default=float)
        )
        final = self.root / "models" / name / version
        os.replace(staging, final)
        return ModelVersion(name, version, final, json.loads((final / "card.json").read_text()))

    def register(self, name: str, source_dir: str | Path, card: dict) -> ModelVersion:
        version, staging = self.new_version_dir(name)
        shutil.copytree(source_dir, staging)
        return self.commit(name, version, staging, card)

    def versions(self, name: str) -> list[ModelVersion]:
        base = self.root / "models" / name
        out = []
        for d in sorted(base.glob("[0-9]*")) if base.exists() else []:
            card = d / "card.json"
            if card.exists():
                out.append(ModelVersion(name, d.name, d, json.loads(card.read_text())))
        return out

    def latest(self, name: str) -> ModelVersion | None:
        v = self.versions(name)
        return v[-1] if v else None

    def newest(self, prefix: str) -> ModelVersion | None:
        """The newest version among the models whose name starts with `prefix` (versions sort by time)."""
        base = self.root / "models"
        found = (
            [(d.name, d.parent.name) for d in base.glob(f"{glob.escape(prefix)}*/[0-9]*") if (d / "card.json").exists()]
            if base.exists()
            else []
        )
        if not found:
            return None
        version, name = max(found)  # one card read, however many versions (serving polls this when unpublished)
        return self.get(name, version)

    def get(self, name: str, version: str) -> ModelVersion:
        d = self.root / "models" / name / version
        if not (d / "card.json").exists():
            raise KeyError(f"no model {name}/{version} in {self.root}")
        return ModelVersion(name, version, d, json.loads((d / "card.json").read_text()))

    # --- publishing ---------------------------------------------------------------------------

    @property
    def pointer(self) -> Path:
        return self.root / "published.json"

    def published(self) -> dict | None:
        try:
            return json.loads(self.pointer.read_text())
        except FileNotFoundError:
            return None

    @property
    def proposal_path(self) -> Path:
        return self.root / "candidate.json"

    def propose(self, gate: dict) -> None:
        """Record the publish gate's verdict on a candidate (atomically), for the step that publishes it."""
        tmp = self.proposal_path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(gate, indent=1, default=float))
        os.replace(tmp, self.proposal_path)

    def proposal(self) -> dict | None:
        try:
            return json.loads(self.proposal_path.read_text())
        except FileNotFoundError:
            return None

    def publish(self, mv: ModelVersion, reason: dict | None = None) -> dict:
        """Swap the pointer to a committed version (write a temp file, then os.replace: atomic)."""
        entry = {
            "name": mv.name,
            "version": mv.version,
            "path": str(mv.path),
            "published_at": time.time(),
            "previous": self.published(),
            **(reason or {}),
        }
        if entry["previous"]:
            entry["previous"].pop("previous", None)
        tmp = self.pointer.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(entry, indent=1, default=float))
        os.replace(tmp, self.pointer)
        return entry
