"""The recipe a run follows, by name: which modalities it asks for and the stage configs. Dagster, the CLI and
the benchmark build their runs from here; every default itself lives once, in the config dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from .model import SeqRecConfig
from .trainer import SeqRecDPOConfig, SeqRecTrainConfig

# fields a run derives from its data (catalogue size, feature widths) or that are not a recipe's business
DERIVED = {
    "n_items",
    "text_dim",
    "image_dim",
    "n_attributes",
    "stage",
    "device",
    "show_progress",
    "retain_freed_memory",
}


@dataclass(frozen=True)
class SeqRecRecipe:
    """Which modalities and side information to ask for (what a catalogue lacks drops out at training time) + the
    SFT and DPO configs; the model's other settings are SeqRecConfig's defaults."""

    name: str
    modalities: tuple[str, ...] = ("id", "text", "image")
    attributes: bool = True  # learned brand / category embeddings on e_id where the catalogue has categories
    sft: SeqRecTrainConfig = field(default_factory=SeqRecTrainConfig)
    dpo: SeqRecDPOConfig = field(default_factory=SeqRecDPOConfig)

    def model_config(self, **overrides) -> dict:
        """SeqRecConfig fields (all but the data-derived ones), this recipe's values, then `overrides`."""
        base = {f.name: _default(f) for f in fields(SeqRecConfig) if f.name not in DERIVED}
        return {**base, "modalities": list(self.modalities), "attributes": self.attributes, **_given(overrides)}

    def sft_config(self, **overrides) -> SeqRecTrainConfig:
        return replace(self.sft, **_given(overrides))

    def dpo_config(self, **overrides) -> SeqRecDPOConfig:
        return replace(self.dpo, **_given(overrides))


def _default(f):
    return f.default_factory() if callable(f.default_factory) else f.default


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()  # "not given: the recipe's value" (None is a value: it turns an optional setting off)


def _given(overrides: dict) -> dict:
    return {k: v for k, v in overrides.items() if v is not UNSET}


RECIPES = {"default": SeqRecRecipe("default")}


def get_recipe(name: str) -> SeqRecRecipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: one of {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def run_name(stage: str, model_cfg: dict, train_cfg: SeqRecTrainConfig) -> str:
    """What a run registers as: seqrec_sft[_moe][_<modalities>][_attr][_<loss>][_nomask],
    seqrec_dpo_<sampler>[_sdpo|_simpo][_later][_<loss>][_nomask]; the loss only when it is not full cross-entropy."""
    mask = ("" if train_cfg.loss == "ce" else f"_{train_cfg.loss}") + ("" if train_cfg.mask_history else "_nomask")
    if stage == "dpo":
        pref = "" if train_cfg.preference == "dpo" else f"_{train_cfg.preference}"
        pref += "" if train_cfg.chosen == "next" else f"_{train_cfg.chosen}"
        return f"seqrec_dpo_{train_cfg.sampler}{pref}{mask}"
    mods = list(model_cfg.get("modalities", ["id"]))
    return (
        "seqrec_sft"
        + ("_moe" if model_cfg.get("moe") else "")
        + ("_" + "_".join(mods) if mods != ["id"] else "")
        + ("_attr" if model_cfg.get("attributes") else "")
        + mask
    )
