"""Snapshot ensemble (Huang et al., ICLR 2017, "Snapshot Ensembles: Train 1, get M for free"): the scores of
two weight snapshots of one training run, mixed with a weight chosen on validation.

Why two snapshots: full-softmax CE fits the popular targets first and the rare ones late; the validation-best
snapshot is the head's optimum, a later one ranks rare targets better and popular ones worse (docs/results.md).

The mix is one inner-product model: (1 - w) q_b . e_b + w q_l . e_l = [(1 - w) q_b, w q_l] . [e_b, e_l], so the
ensemble exposes the members' encoder interface (item_tables / encode / query / fused_table) with the two
members' vectors side by side, and the serving API's precomputed and ANN modes serve it as they serve one model."""

from __future__ import annotations

import torch
from torch import nn

from .data import EvalSet
from .evaluate import best_weight
from .transitions import without_prior

MIX_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)  # weights of the late snapshot tried on validation


class SnapshotEnsemble(nn.Module):
    """s(i | seq) = (1 - w) * s_best(i | seq) + w * s_late(i | seq): one matrix product per member."""

    def __init__(self, best: nn.Module, late: nn.Module, late_weight: float):
        super().__init__()
        if not 0.0 <= late_weight <= 1.0:
            raise ValueError(f"late_weight must lie in [0, 1], got {late_weight!r}")
        if best.cfg.n_items != late.cfg.n_items:
            raise ValueError(f"the snapshots score different catalogues: {best.cfg.n_items} vs {late.cfg.n_items}")
        self.best, self.late, self.late_weight, self.cfg = best, late, float(late_weight), best.cfg

    def members(self) -> dict[str, tuple[nn.Module, float]]:
        return {"best": (self.best, 1.0 - self.late_weight), "late": (self.late, self.late_weight)}

    def full_sort_predict(self, seq: torch.Tensor) -> torch.Tensor:
        """Every item's mixed score after the last position, (B, n_items + 1); padding stays at -inf."""
        out = self.best.full_sort_predict(seq)
        if self.late_weight == 0.0:
            return out
        return mix(out, self.late.full_sort_predict(seq), self.late_weight)

    def predict(self, seq: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        w = self.late_weight
        return (1 - w) * self.best.predict(seq, items) + w * self.late.predict(seq, items)

    # --- the encoder interface of one model (serving, the item index): members side by side ---------------------

    def item_tables(self) -> dict[str, torch.Tensor]:
        """Each member's item tables, keyed "<member>.<modality>"."""
        return {f"{name}.{m}": t for name, (mod, _) in self.members().items() for m, t in mod.item_tables().items()}

    def encode(self, seq: torch.Tensor, tables: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Each member's hidden states, keyed "<member>.<modality>"."""
        tables = tables or self.item_tables()
        out = {}
        for name, (mod, _) in self.members().items():
            hidden = mod.encode(seq, _member(tables, name))
            out |= {f"{name}.{m}": h for m, h in hidden.items()}
        return out

    def query(self, hidden: dict[str, torch.Tensor]) -> torch.Tensor:
        """[(1 - w) q_best, w q_late]: scores against `fused_table` as the mix of the members' scores."""
        return torch.cat([w * mod.query(_member(hidden, n)) for n, (mod, w) in self.members().items()], -1)

    def fused_table(self, tables: dict[str, torch.Tensor]) -> torch.Tensor:
        """[E_best, E_late]: the members' fused item tables side by side."""
        return torch.cat([mod.fused_table(_member(tables, n)) for n, (mod, _) in self.members().items()], -1)

    def fuse(
        self, hidden: dict[str, torch.Tensor], tables: dict[str, torch.Tensor], items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The mixed scores of all items, or of the given (N, C) items, from `encode`'s states."""
        return self.best.score(self.query(hidden), self.fused_table(tables), items)

    def item_table(self, modality: str) -> torch.Tensor:
        """The best member's item table of one modality (item-to-item similarity)."""
        return self.best.item_table(modality)


def trained_member(model: nn.Module) -> nn.Module:
    """The weights a stage trains: a snapshot ensemble's best member, or the model itself (under any Markov prior)."""
    model = without_prior(model)
    return model.best if isinstance(model, SnapshotEnsemble) else model


def _member(keyed: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    return {k.split(".", 1)[1]: v for k, v in keyed.items() if k.startswith(f"{name}.")}


def mix(best: torch.Tensor, late: torch.Tensor, late_weight: float) -> torch.Tensor:
    """(1 - w) s_best + w s_late of two full score matrices, a new matrix (at w = 0 equal to s_best)."""
    mixed = (1 - late_weight) * best + late_weight * late
    mixed[:, 0] = float("-inf")  # the padding id (0 * -inf would be NaN at a weight of 0 or 1)
    return mixed


def choose_late_weight(best: nn.Module, late: nn.Module, valid: EvalSet, grid=MIX_GRID) -> tuple[float, dict]:
    """The grid weight with the highest validation NDCG@10 (ties: the smaller weight) and each weight's score.
    Each member scores the validation users once; every weight ranks its mix of those scores."""
    best.eval(), late.eval()

    def mixes(seq):
        s_best, s_late = best.full_sort_predict(seq), late.full_sort_predict(seq)
        return ((w, mix(s_best, s_late, w)) for w in grid)

    return best_weight(mixes, best, valid, grid)
