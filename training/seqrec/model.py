"""Multimodal SASRec-style encoder of RoDPO section 3.2, one model per file in RecBole's style.

Item IDs and pre-computed text / image vectors are projected into one d-dimensional space
(e_id = Emb(i), e_txt = W_txt v_txt, e_img = W_img v_img), optionally refined by a sparse noisy
MoE, encoded by modality-specific causal Transformers with absolute positions, and scored by
s(x,i) = s_id + a_txt s_txt + a_img s_img (Eq. 3). Scoring all items is one matrix product per
modality. Sequences are left-padded with 0.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .gathered import GatheredFusedTable, GatheredTable, RowsOf
from .losses import full_cross_entropy
from .scores import PositionScores, all_item_scores, seen_pairs

seen_items = seen_pairs  # (row, item) pairs of each position's prefix, the row's target excepted

MODALITIES = ("id", "text", "image")


@dataclass
class SeqRecConfig:
    n_items: int
    d: int = 64
    max_len: int = 50
    n_layers: int = 2
    n_heads: int = 2
    inner: int = 256
    dropout: float = 0.3
    attn_dropout: float = 0.3
    modalities: list[str] = field(default_factory=lambda: ["id"])
    text_dim: int = 0
    image_dim: int = 0
    moe: bool = False
    n_experts: int = 4
    moe_top_k: int = 2
    moe_noise: float = 1.0
    moe_aux_weight: float = 0.01
    id_init: Literal["cooccurrence", "random"] = "cooccurrence"  # see warmstart.py (training split only)
    attributes: bool = False  # e_id = Emb(i) + mean of the item's learned attribute embeddings (brand, categories)
    n_attributes: int = 0  # attribute vocabulary size (ids 1..n_attributes, 0 = padding)
    temperature: float | None = None  # cosine scoring: fused query and item rows L2-normalised, scores / temperature
    id_dropout: float = 0.2  # training: each item's whole ID row dropped with this probability (RowDropout, DropoutNet)

    def __post_init__(self):
        for name in ("dropout", "attn_dropout", "id_dropout"):
            if not 0 <= getattr(self, name) < 1:  # p = 1 would scale the kept units by 1 / 0
                raise ValueError(f"SeqRecConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


class SparseNoisyMoE(nn.Module):
    """MoE(h) = sum_{j in S(h)} G(h)_j E_j(h), |S(h)| = k, noisy top-k gating (RoDPO Eq. 2; Shazeer 2017)."""

    def __init__(self, d: int, n_experts: int = 4, top_k: int = 2, noise: float = 1.0, inner: int | None = None):
        super().__init__()
        inner = inner or 2 * d
        self.top_k, self.noise = top_k, noise
        self.gate = nn.Linear(d, n_experts, bias=False)
        self.noise_gate = nn.Linear(d, n_experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(n_experts, d, inner) * d**-0.5)
        self.w2 = nn.Parameter(torch.randn(n_experts, inner, d) * inner**-0.5)
        self.aux_loss = torch.zeros(())

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.gate(x)
        if self.training and self.noise > 0:
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise_gate(x)) * self.noise
        top, idx = logits.topk(self.top_k, dim=-1)
        return torch.zeros_like(logits).scatter(-1, idx, top.softmax(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gates(x)  # (..., E), k non-zeros
        hidden = F.gelu(torch.einsum("...d,edh->...eh", x, self.w1))
        out = torch.einsum("...eh,ehd->...ed", hidden, self.w2)
        flat = g.reshape(-1, g.shape[-1])
        # load balancing (Switch): E * sum_j (fraction routed to j) * (mean gate of j)
        frac = (flat > 0).float().mean(0) / self.top_k
        self.aux_loss = flat.shape[-1] * (frac * flat.mean(0)).sum()
        return (g.unsqueeze(-1) * out).sum(-2)


class Dropout(nn.Dropout):
    """nn.Dropout with its Bernoulli(1 - p) mask drawn as uniform >= p (torch.rand): the same distribution,
    drawn faster on a CPU than by bernoulli_ (docs/results.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))


class RowDropout(Dropout):
    """Whole rows of a table dropped with probability p, kept rows scaled by 1 / (1 - p): an item's ID row is
    absent at a step, so its attributes and text must score it (DropoutNet, Volkovs et al., NeurIPS 2017, Sec. 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = self.row_factors(len(x), x)
        return x if keep is None else x * keep

    def row_factors(self, n: int, like: torch.Tensor) -> torch.Tensor | None:
        """(n, 1): 0 for a dropped row, 1 / (1 - p) for a kept one; None when nothing is dropped (eval, p = 0)."""
        if not self.training or self.p == 0:
            return None
        return (torch.rand(n, 1, device=like.device) >= self.p).to(like.dtype).mul_(1.0 / (1.0 - self.p))


class AttributeMean(torch.autograd.Function):
    """A W and its backward A^T g: each item's mean attribute embedding as one sparse product, A row-normalised
    (CSR, with its transpose kept for the backward), instead of embedding_bag over every item per step."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mean: torch.Tensor, mean_t: torch.Tensor) -> torch.Tensor:
        ctx.mean_t = mean_t
        return mean @ weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.mean_t @ grad, None, None


def attribute_mean_parts(attrs: torch.Tensor, n_attributes: int) -> tuple[tuple[torch.Tensor, ...], ...]:
    """CSR parts (crow, col, value) of A, A[i, a] = 1 / |attrs(i)| for each non-padding attribute a of item i,
    and of A^T: dense tensors, so that the model still deep-copies (an AveragedModel, the DPO reference)."""
    rows, cols = (attrs > 0).nonzero(as_tuple=True)
    ids = attrs[rows, cols]
    weight = 1.0 / (attrs > 0).sum(1).clamp(min=1)[rows].float()
    size = (len(attrs), n_attributes + 1)
    a = torch.sparse_coo_tensor(torch.stack([rows, ids]), weight, size, check_invariants=False).coalesce()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        csr = a.to_sparse_csr(), a.t().coalesce().to_sparse_csr()
    return tuple((m.crow_indices(), m.col_indices(), m.values()) for m in csr)


class CausalBlock(nn.Module):
    def __init__(self, cfg: SeqRecConfig):
        super().__init__()
        self.heads, self.attn_dropout = cfg.n_heads, cfg.attn_dropout
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d), nn.LayerNorm(cfg.d)
        self.qkv, self.proj = nn.Linear(cfg.d, 3 * cfg.d), nn.Linear(cfg.d, cfg.d)
        self.ff = nn.Sequential(
            nn.Linear(cfg.d, cfg.inner), nn.GELU(), Dropout(cfg.dropout), nn.Linear(cfg.inner, cfg.d)
        )
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, L, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class ModalityEncoder(nn.Module):
    """Absolute positions + causal Transformer over one modality's item representations."""

    def __init__(self, cfg: SeqRecConfig):
        super().__init__()
        self.pos = nn.Embedding(cfg.max_len, cfg.d)
        self.ln_in, self.ln_out = nn.LayerNorm(cfg.d), nn.LayerNorm(cfg.d)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(CausalBlock(cfg) for _ in range(cfg.n_layers))

    def forward(self, x: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        x = self.drop(self.ln_in(x + self.pos.weight[-L:])) * valid.unsqueeze(-1)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_out(x)


class MultimodalSASRec(nn.Module):
    def __init__(
        self,
        cfg: SeqRecConfig,
        text: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        attributes: torch.Tensor | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        n = cfg.n_items + 1
        unknown = set(cfg.modalities) - set(MODALITIES)
        if unknown or not cfg.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {cfg.modalities}")
        self.item_id = nn.Embedding(n, cfg.d, padding_idx=0) if "id" in cfg.modalities else None
        if self.item_id is not None:
            nn.init.normal_(self.item_id.weight, std=cfg.d**-0.5)
            self.id_drop = RowDropout(cfg.id_dropout)
        if cfg.attributes:
            self.init_attributes(attributes)
        for name, feats, dim in (("text", text, cfg.text_dim), ("image", image, cfg.image_dim)):
            if name not in cfg.modalities:
                continue
            if dim <= 0:
                raise ValueError(f"modality {name!r} needs {name}_dim > 0 and a feature matrix")
            feats = torch.zeros(n, dim) if feats is None else feats.float()
            if feats.shape != (n, dim):
                raise ValueError(f"{name} features must have shape {(n, dim)}, got {tuple(feats.shape)}")
            self.register_buffer(f"{name}_feats", feats)
            self.register_buffer(f"{name}_has", feats.abs().sum(1) > 0)
            setattr(self, f"{name}_proj", nn.Sequential(nn.Linear(dim, cfg.d), nn.LayerNorm(cfg.d)))
            setattr(self, f"{name}_missing", nn.Parameter(torch.zeros(cfg.d)))
        self.moe = (
            nn.ModuleDict(
                {m: SparseNoisyMoE(cfg.d, cfg.n_experts, cfg.moe_top_k, cfg.moe_noise) for m in cfg.modalities}
            )
            if cfg.moe
            else None
        )
        self.encoders = nn.ModuleDict({m: ModalityEncoder(cfg) for m in cfg.modalities})
        self.alpha = nn.ParameterDict({m: nn.Parameter(torch.ones(())) for m in cfg.modalities[1:]})

    def init_attributes(self, attributes: torch.Tensor | None) -> None:
        """Attribute ids per item, (n_items + 1, max attributes) zero-padded; embeddings start at 0 (e_id unchanged)."""
        cfg, n = self.cfg, self.cfg.n_items + 1
        if "id" not in cfg.modalities or cfg.n_attributes <= 0:
            raise ValueError("attributes extend the id modality and need n_attributes > 0")
        attributes = torch.zeros(n, 1, dtype=torch.long) if attributes is None else attributes.long()
        if attributes.shape[0] != n or attributes.numel() and int(attributes.max()) > cfg.n_attributes:
            raise ValueError(
                f"attributes must have {n} rows of ids in 0..{cfg.n_attributes}, got {tuple(attributes.shape)}"
            )
        self.register_buffer("item_attrs", attributes)
        self.attr_emb = nn.Embedding(cfg.n_attributes + 1, cfg.d, padding_idx=0)
        nn.init.zeros_(self.attr_emb.weight)
        self._attr_mean: tuple | None = None  # (key, CSR parts), rebuilt when item_attrs changes or moves

    def attribute_means(self) -> torch.Tensor:
        """(n_items + 1, d): each item's mean attribute embedding, padding ids skipped (0 for an item without)."""
        attrs = self.item_attrs
        key = (attrs.data_ptr(), attrs._version, attrs.device)
        if self._attr_mean is None or self._attr_mean[0] != key:
            self._attr_mean = (key, attribute_mean_parts(attrs, self.cfg.n_attributes))
        n = (len(attrs), self.cfg.n_attributes + 1)
        mean, mean_t = (
            torch.sparse_csr_tensor(*parts, size=size, check_invariants=False)
            for parts, size in zip(self._attr_mean[1], (n, n[::-1]))
        )
        return AttributeMean.apply(self.attr_emb.weight, mean, mean_t)

    # --- item side ------------------------------------------------------------------------------

    def item_table(self, modality: str) -> torch.Tensor:
        """E_m: (n_items + 1, d) item representations of one modality."""
        if modality == "id":
            return GatheredTable(self.id_terms()).dense()
        feats, has, proj, missing = self.side_parts(modality)
        if bool(has[1:].all()):  # every item has this modality: the placeholder fills only the padding row
            return torch.cat([missing[None], proj(feats[1:])])
        return self.item_rows(modality, slice(None))

    def item_rows(self, modality: str, idx) -> torch.Tensor:
        """E_m at the items idx of a side modality: its projection run on those rows only."""
        feats, has, proj, missing = self.side_parts(modality)
        return torch.where(has[idx].unsqueeze(-1), proj(feats[idx]), missing)

    def side_parts(self, modality: str) -> tuple:
        """A side modality's item features, which items have them, its projection and its placeholder row."""
        return tuple(getattr(self, f"{modality}_{part}") for part in ("feats", "has", "proj", "missing"))

    def id_terms(self) -> list:
        """E_id = dropout(W) [+ attribute means] as GatheredTable terms: W with its rows' keep factors (one draw)."""
        weight = self.item_id.weight
        terms = [(weight, self.id_drop.row_factors(len(weight), weight))]
        return terms + [(self.attribute_means(), None)] if self.cfg.attributes else terms

    def item_tables(self) -> dict[str, torch.Tensor]:
        return {m: self.item_table(m) for m in self.cfg.modalities}

    def gathered_tables(self) -> dict[str, GatheredTable]:
        """item_tables() built only at the rows a step gathers (gathered.py): the ID rows' dropout applied there,
        the side modalities projected there."""
        return {
            m: GatheredTable(self.id_terms())
            if m == "id"
            else RowsOf(partial(self.item_rows, m), partial(self.item_table, m), self.cfg.n_items + 1)
            for m in self.cfg.modalities
        }

    # --- sequence side --------------------------------------------------------------------------

    def encode(self, seq: torch.Tensor, tables: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Hidden states per modality at every position: {m: (B, L, d)}."""
        tables = tables or self.item_tables()
        valid = seq > 0
        L = seq.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()
        mask = (causal & valid[:, None, :]) | torch.eye(L, dtype=torch.bool, device=seq.device)
        mask = mask.unsqueeze(1)
        out = {}
        for m, enc in self.encoders.items():
            x = tables[m][seq] if isinstance(tables[m], GatheredTable) else F.embedding(seq, tables[m])
            if self.moe is not None:
                x = x + self.moe[m](x)
            out[m] = enc(x, valid, mask)
        return out

    def fuse(
        self, hidden: dict[str, torch.Tensor], tables: dict[str, torch.Tensor], items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """s = s_id + a_txt s_txt + a_img s_img (Eq. 3); all items, or the given (N, C) items.

        Computed as one product [h_id, a_txt h_txt, ...] . [E_id, E_txt, ...]: the same sum, without
        materialising a per-modality (N, n_items) score matrix to scale and add.
        """
        return self.score(self.query(hidden), self.fused_table(tables), items)

    def query(self, hidden: dict[str, torch.Tensor]) -> torch.Tensor:
        """[h_id, a_txt h_txt, a_img h_img]: the fused query that scores against `fused_table`."""
        first, *rest = self.cfg.modalities
        query = torch.cat([hidden[first], *(self.alpha[m] * hidden[m] for m in rest)], -1)
        return self.normalised(query) / self.cfg.temperature if self.cfg.temperature else query

    def fused_table(self, tables: dict[str, torch.Tensor]) -> torch.Tensor:
        """[E_id, E_txt, E_img]: (n_items + 1, d * n_modalities), rows L2-normalised with a temperature."""
        if isinstance(next(iter(tables.values())), GatheredTable):
            return GatheredFusedTable([tables[m] for m in self.cfg.modalities], bool(self.cfg.temperature))
        table = (
            torch.cat([tables[m] for m in self.cfg.modalities], -1) if len(tables) > 1 else next(iter(tables.values()))
        )
        return self.normalised(table) if self.cfg.temperature else table

    @staticmethod
    def normalised(x: torch.Tensor) -> torch.Tensor:
        """x / ||x|| per row (the padding row stays 0): s(x, i) = cos(q, e_i) / temperature."""
        return F.normalize(x, dim=-1, eps=1e-12)

    @staticmethod
    def score(query: torch.Tensor, table: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Query . table^T over all items (one matrix product on row-aligned scores), or the given (N, C) items."""
        if items is None:
            return all_item_scores(query, table)
        return torch.einsum("nd,ncd->nc", query, table[items])

    def disable_dropout(self) -> None:
        """Every dropout off, attention's included (trl's disable_dropout for a preference stage): the policy's
        margins are then comparable with the reference's, which is scored without dropout."""
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
            if isinstance(module, CausalBlock):
                module.attn_dropout = 0.0

    def aux_loss(self) -> torch.Tensor:
        if self.moe is None:
            return torch.zeros(())
        return self.cfg.moe_aux_weight * sum(moe.aux_loss for moe in self.moe.values())

    def position_scores(
        self, seq: torch.Tensor, targets: torch.Tensor, mask_seen: bool = False, gathered: bool = False
    ) -> PositionScores:
        """Every non-padded target position's fused query and the fused item table: the (N, n_items + 1) score
        matrix as its factors (scores.py), with `mask_seen` the items already in each prefix excluded; `gathered`:
        the table built only at the rows the loss reads (a sampled loss)."""
        tables = self.gathered_tables() if gathered else self.item_tables()
        hidden = self.encode(seq, tables)
        sel = targets > 0
        query = self.query({m: h[sel] for m, h in hidden.items()})
        return PositionScores(query, self.fused_table(tables), targets[sel], seq, targets, mask_seen)

    def position_logits(self, seq: torch.Tensor, targets: torch.Tensor, mask_seen: bool = False):
        """Logits over all items at every non-padded target position: (N, n_items + 1), targets (N,).

        `mask_seen`: items already in a position's prefix are set to -inf (the evaluation and the serving API
        rank only unseen items), the position's own target excepted. The prefix is the training window's (the
        last `max_len` items); the evaluation masks the whole history.
        """
        scored = self.position_scores(seq, targets, mask_seen)
        return scored.materialise(), scored.targets

    def calculate_loss(
        self, seq: torch.Tensor, targets: torch.Tensor, mask_seen: bool = False, objective=None, return_scores=False
    ):
        """The objective (losses.py; default: cross-entropy over all items) at every position, one causal pass.

        `return_scores`: also the positions' `PositionScores`, (loss, scores), for the DPO term. An objective that
        reads only some items' scores (`gathers_rows`, the sampled losses) gets a table built at those rows."""
        scored = self.position_scores(seq, targets, mask_seen, gathered=getattr(objective, "gathers_rows", False))
        loss = (objective or full_cross_entropy)(scored) + self.aux_loss()
        return (loss, scored) if return_scores else loss

    def full_sort_predict(self, seq: torch.Tensor) -> torch.Tensor:
        """Scores of every item after the last position: (B, n_items + 1), padding at -inf."""
        tables = self.item_tables()
        hidden = self.encode(seq, tables)
        scores = self.fuse({m: h[:, -1] for m, h in hidden.items()}, tables)
        scores[:, 0] = float("-inf")
        return scores

    def predict(self, seq: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of given candidates (B, C) after the last position."""
        tables = self.item_tables()
        hidden = self.encode(seq, tables)
        return self.fuse({m: h[:, -1] for m, h in hidden.items()}, tables, items)
