"""The pointwise formulation (MLLM-MSR, HaNoRec): user preferences + one candidate -> "Yes" / "No", scored by P(Yes).

A prompt is split where the candidate starts: the user part (system, preference summary, recent items) is the
shared prefix of every candidate of a question; each candidate's text, the question and the assistant header are
its continuation; the answer is the completion. The score of a candidate is log P(Yes) - log P(No) at the answer,
the log-odds of P(Yes | answer in {Yes, No}), which orders candidates as P(Yes) renormalised does."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .prefix import Group, encode_group, next_token_logits
from .prompt import Example, history_lines

PROMPT_VERSION = "pointwise-v1"
SYSTEM = "You are a recommender system. Answer Yes if the user will choose the candidate next, otherwise No."
YES, NO = "Yes", "No"
_CUT = "\x00CANDIDATE\x00"


def candidate_text(ex: Example, i: int, max_note_chars: int = 160) -> str:
    note = ex.candidate_notes[i] if ex.candidate_notes else None
    head = f"Candidate: {ex.candidates[i]}" + (f" ({note[:max_note_chars]})" if note else "")
    return head + "\nWill the user choose this candidate next? Answer Yes or No."


def prompt_parts(tok, ex: Example) -> tuple[str, str]:
    """(prefix, tail): the chat prompt of any candidate c of `ex` is prefix + candidate_text(c) + tail."""
    user = "\n".join(history_lines(ex)) + "\n" + _CUT
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    full = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    prefix, tail = full.split(_CUT)
    return prefix, tail


def prompt_text(tok, ex: Example, i: int) -> str:
    """The whole chat prompt for candidate i (the unsplit form: GRPO, generation, the docs)."""
    prefix, tail = prompt_parts(tok, ex)
    return prefix + candidate_text(ex, i) + tail


def answer(tok, yes: bool) -> str:
    return (YES if yes else NO) + (tok.eos_token or "")


def sft_group(tok, ex: Example) -> dict:
    """Every candidate of a question with its label: the target answered Yes, the negatives No."""
    prefix, tail = prompt_parts(tok, ex)
    n = len(ex.candidates)
    return {
        "prefix": prefix,
        "contexts": [candidate_text(ex, i) + tail for i in range(n)],
        "completions": [answer(tok, i == ex.target) for i in range(n)],
    }


def pair_group(tok, ex: Example, rejected: int) -> dict:
    """A preference pair across candidates: Yes for the chosen (target) item preferred to Yes for the rejected one."""
    prefix, tail = prompt_parts(tok, ex)
    return {
        "prefix": prefix,
        "contexts": [candidate_text(ex, i) + tail for i in (ex.target, rejected)],
        "completions": [answer(tok, True)] * 2,
        "pairs": [[0, 1]],
    }


def yes_no_ids(tok) -> tuple[int, int]:
    return tok(YES, add_special_tokens=False)["input_ids"][0], tok(NO, add_special_tokens=False)["input_ids"][0]


def score_group(model, tok, g: Group) -> np.ndarray:
    """log P(Yes) - log P(No) after each continuation (Eq.: s_c = log p(Yes | u, c) - log p(No | u, c))."""
    yes, no = yes_no_ids(tok)
    logits = next_token_logits(model, g, tok.pad_token_id or 0)
    return (logits[:, yes] - logits[:, no]).cpu().numpy()


@torch.inference_mode()
def score_candidates(model, tok, ex: Example, candidates: Sequence[int] | None = None) -> np.ndarray:
    """Pointwise scores of the candidates of `ex` (all by default): one prefix, every candidate against its cache."""
    prefix, tail = prompt_parts(tok, ex)
    idx = range(len(ex.candidates)) if candidates is None else candidates
    g = encode_group(tok, prefix, [candidate_text(ex, i) + tail for i in idx], [""] * len(idx))
    return score_group(model, tok, g)
