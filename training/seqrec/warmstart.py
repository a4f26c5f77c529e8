"""Warm start for item ID embeddings from the training split's co-occurrence graph."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh


def cooccurrence_embeddings(train: list[np.ndarray], n_items: int, d: int, window: int = 3, seed: int = 0) -> np.ndarray:
    """Top-d eigenvectors of D^-1/2 C D^-1/2, C = co-occurrences within `window` steps (training part only).

    Returns (n_items + 1, d) with row 0 zero, scaled to std d^-1/2 like the default initialisation.
    """
    rows, cols = [], []
    for s in train:
        for w in range(1, window + 1):
            if len(s) > w:
                rows.append(s[:-w])
                cols.append(s[w:])
    r, c = np.concatenate(rows), np.concatenate(cols)
    n = n_items + 1
    co = sp.coo_matrix((np.ones(len(r) * 2), (np.r_[r, c], np.r_[c, r])), shape=(n, n)).tocsr()
    co = co + sp.identity(n, format="csr")  # every item is its own neighbour: no isolated rows
    deg = np.asarray(co.sum(1)).ravel()
    inv = sp.diags(1.0 / np.sqrt(deg))
    norm = inv @ co @ inv
    rng = np.random.default_rng(seed)
    vals, vecs = eigsh(norm, k=d + 1, which="LA", v0=rng.standard_normal(n))
    vecs = vecs[:, np.argsort(-vals)][:, 1:d + 1]  # drop the trivial leading eigenvector
    vecs = vecs / (vecs[1:].std() + 1e-12) * d ** -0.5
    vecs[0] = 0
    return vecs.astype(np.float32)


def warm_start_ids(model, train: list[np.ndarray]) -> bool:
    """Copy the co-occurrence embeddings into the ID table when the config asks for it."""
    import torch

    if model.item_id is None or model.cfg.id_init != "cooccurrence" or not train:
        return False
    vecs = cooccurrence_embeddings(train, model.cfg.n_items, model.cfg.d)
    with torch.no_grad():
        model.item_id.weight.copy_(torch.from_numpy(vecs))
    return True
