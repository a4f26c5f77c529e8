"""Checkpoints as safetensors + JSON config: no pickle, nothing executable in a model file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load, load_file, save_file
from torch import nn

from .ensemble import SnapshotEnsemble
from .model import MultimodalSASRec, SeqRecConfig
from .transitions import MarkovMixed, TransitionCounts

FORMAT = "recalign.seqrec/1"
LATE = "late"  # a snapshot ensemble's late member: a model folder inside the best member's
MARKOV = "markov.safetensors"  # a Markov prior's transition counts (CSR), beside the model's weights


def _atomic_write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def save_model(
    model: MultimodalSASRec | SnapshotEnsemble | MarkovMixed, directory: str | Path, extra: dict | None = None
) -> Path:
    """model.safetensors + config.json in directory (written to temp names, then renamed); a snapshot ensemble: its
    best member there, its late member in `late/`, the weight in config.json's "ensemble"; a Markov prior: its
    counts in markov.safetensors, its settings in config.json's "markov"."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(model, MarkovMixed):
        counts = {k: v.detach().cpu().contiguous() for k, v in model.counts.state_dict().items()}
        save_file(counts, str(d / f"{MARKOV}.tmp"), metadata={"format": FORMAT})
        os.replace(d / f"{MARKOV}.tmp", d / MARKOV)
        return save_model(model.model, d, {**(extra or {}), "markov": model.settings()})
    if isinstance(model, SnapshotEnsemble):
        save_model(model.late, d / LATE)
        return save_model(model.best, d, {**(extra or {}), "ensemble": {"late_weight": model.late_weight}})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / "model.safetensors.tmp"), metadata={"format": FORMAT})
    os.replace(d / "model.safetensors.tmp", d / "model.safetensors")
    _atomic_write_json(d / "config.json", {"format": FORMAT, "model": model.cfg.to_dict(), **(extra or {})})
    return d


def load_model(directory: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict]:
    """Load and check a saved model (a snapshot ensemble and / or a Markov prior where config.json says so);
    ValueError on anything inconsistent."""
    model, meta = load_single(directory, map_location)
    mix, prior = meta.get("ensemble"), meta.get("markov")
    if mix:
        if not (Path(directory) / LATE / "config.json").exists():
            raise ValueError(f"{directory}: a snapshot ensemble without its late member ({LATE}/)")
        late, _ = load_single(Path(directory) / LATE, map_location)
        model = SnapshotEnsemble(model, late, mix["late_weight"])
    if prior:
        if not (Path(directory) / MARKOV).exists():
            raise ValueError(f"{directory}: a Markov prior without its transition counts ({MARKOV})")
        state = load((Path(directory) / MARKOV).read_bytes())
        counts = TransitionCounts(state["indptr"], state["indices"], state["values"], prior["window"])
        model = MarkovMixed(model, counts.to(map_location), prior["weight"], prior["order"], prior["decay"])
    return model, meta


def load_single(directory: str | Path, map_location: str = "cpu") -> tuple[MultimodalSASRec, dict]:
    """One model folder: its weights and config.json (an ensemble's best member, without the late one)."""
    d = Path(directory)
    meta = json.loads((d / "config.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{d}: not a recalign sequential model (format {meta.get('format')!r})")
    cfg = SeqRecConfig(**meta["model"])
    # read into memory this process owns: a memory-mapped file truncated or replaced in place under a running
    # server would kill it with SIGBUS at the next access
    state = {k: v.to(map_location) for k, v in load((d / "model.safetensors").read_bytes()).items()}
    model = MultimodalSASRec(
        cfg, text=state.get("text_feats"), image=state.get("image_feats"), attributes=state.get("item_attrs")
    )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{d}: incompatible weights (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if any(not torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise ValueError(f"{d}: weights contain NaN or inf")
    model.eval()
    return model, meta


def save_training_state(directory: Path, model, optimizer, state: dict, ema=None) -> None:
    """Everything needed to resume after an interruption: weights, optimizer moments, counters, the weight average."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors |= {f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, pstate in opt["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"opt.{pid}.{name}"] = value.detach().cpu().contiguous().reshape(value.shape)
    tensors["rng.torch"] = torch.get_rng_state()
    # one file, replaced atomically: a kill at any moment leaves the previous epoch's state or this one, whole
    meta = json.dumps({**state, "param_groups": opt["param_groups"]}, default=float)
    save_file(tensors, str(directory / "state.safetensors.tmp"), metadata={"state": meta})
    os.replace(directory / "state.safetensors.tmp", directory / "state.safetensors")


def training_state_meta(directory: Path) -> dict | None:
    """The counters of the last saved training state (epoch, history...), or None."""
    path = directory / "state.safetensors"
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["state"])


def load_training_state(directory: Path, model, optimizer, ema=None) -> dict | None:
    meta = training_state_meta(directory)
    if meta is None:
        return None
    tensors = load_file(str(directory / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    opt_state: dict = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return meta
