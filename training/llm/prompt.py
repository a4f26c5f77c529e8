"""The listwise formulation: preference summary + recent titles + a candidate list -> the chosen title."""

from __future__ import annotations

from dataclasses import dataclass, field

PROMPT_VERSION = "listwise-v1"
SYSTEM = "You are a recommender system. Pick the one candidate the user will choose next."


@dataclass
class Example:
    """One recommendation question. `candidates` are titles (shuffled); `target` is the index of the true one."""

    user_id: int
    summary: str | None
    history: list[str]
    candidates: list[str]
    target: int
    candidate_ids: list[int] = field(default_factory=list)
    candidate_notes: list[str | None] = field(default_factory=list)  # item summaries, when given

    @property
    def answer(self) -> str:
        return self.candidates[self.target]


def history_lines(ex: Example) -> list[str]:
    """What both formulations say about the user: the preference summary and the recent items."""
    lines = [f"User preferences: {ex.summary or 'unknown yet'}"]
    if ex.history:
        lines.append("Recent items: " + "; ".join(ex.history))
    return lines


def user_message(ex: Example, max_note_chars: int = 160) -> str:
    lines = [*history_lines(ex), "Candidates:"]
    notes = ex.candidate_notes or [None] * len(ex.candidates)
    for title, note in zip(ex.candidates, notes):
        lines.append(f"- {title}" + (f" ({note[:max_note_chars]})" if note else ""))
    lines.append("Answer with the exact title of the candidate the user will choose next.")
    return "\n".join(lines)


def prompt_text(tok, ex: Example) -> str:
    """The chat-formatted prompt, ending where the assistant's answer (the title) starts."""
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_message(ex)}]
    return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def completion_text(tok, title: str) -> str:
    """The answer as trained: the title, then the end-of-turn token."""
    return title + (tok.eos_token or "")


def sft_group(tok, ex: Example) -> dict:
    """The whole prompt is the shared prefix; the one continuation is the answer."""
    return {"prefix": prompt_text(tok, ex), "contexts": [""], "completions": [completion_text(tok, ex.answer)]}


def pair_group(tok, ex: Example, rejected: int) -> dict:
    """The chosen title preferred to the rejected one after the same prompt (the prompt encoded once)."""
    titles = (ex.answer, ex.candidates[rejected])
    return {
        "prefix": prompt_text(tok, ex),
        "contexts": ["", ""],
        "completions": [completion_text(tok, t) for t in titles],
        "pairs": [[0, 1]],
    }
