"""Versioned prompts of the item and user summarizers (MLLM-MSR section 3.2). Bump a version when its text
changes: the version is part of the cache key, so old summaries are kept and new ones are generated."""

from __future__ import annotations

ITEM_PROMPT_VERSION = "item-v1"
USER_PROMPT_VERSION = "user-v1"
SYSTEM = "You are a concise shopping and movie assistant. Answer in one or two plain sentences."


def _clip(text: str | None, n: int) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= n else text[: n - 1].rsplit(" ", 1)[0] + "…"


def item_prompt(fields: dict, image_text: str | None = None, has_image: bool = False) -> str:
    """Item summarizer: title, attributes, description or plot, and the image (attached, or as bridged text)."""
    lines = [f"Item: {_clip(fields.get('title'), 200) or 'unknown'}"]
    if fields.get("categories"):
        lines.append(f"Attributes: {_clip(fields['categories'], 200)}")
    if fields.get("description"):
        lines.append(f"Description: {_clip(fields['description'], 500)}")
    if has_image:
        lines.append("The item's image is attached.")
    if image_text:
        lines.append(f"Image content: {_clip(image_text, 300)}")
    lines.append("Summarize what this item is and who would like it, in at most two sentences.")
    return "\n".join(lines)


def user_prompt(previous: str | None, block: list[dict]) -> str:
    """Recurrent user summarizer: the previous preference summary plus this block's item summaries."""
    lines = [
        f"Previous preference summary: {_clip(previous, 600)}"
        if previous
        else "This is the start of the user's history."
    ]
    lines.append("The user then interacted with these items, in order:")
    lines += [f"- {_clip(it.get('title'), 120)}: {_clip(it.get('summary'), 240)}" for it in block]
    lines.append("Update the summary of this user's preferences in at most two sentences.")
    return "\n".join(lines)
