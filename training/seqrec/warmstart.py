"""Warm start for item ID embeddings from the training split's co-occurrence graph."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, eigsh


def cooccurrence_matrix(train: list[np.ndarray], n: int, window: int = 3) -> sp.csr_matrix:
    """Symmetric counts of item pairs at most `window` steps apart in a training sequence: (n, n)."""
    rows, cols = [], []
    for s in train:
        for w in range(1, window + 1):
            if len(s) > w:
                rows.append(s[:-w])
                cols.append(s[w:])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return sp.coo_matrix((np.ones(len(r) * 2), (np.r_[r, c], np.r_[c, r])), shape=(n, n)).tocsr()


def fix_signs(vecs: np.ndarray) -> np.ndarray:
    """Each eigenvector's sign chosen so that its largest-magnitude entry is positive (the solver's sign is arbitrary)."""
    top = np.abs(vecs).argmax(0)
    return vecs * np.sign(vecs[top, np.arange(vecs.shape[1])])


def cooccurrence_embeddings(
    train: list[np.ndarray], n_items: int, d: int, window: int = 3, seed: int = 0, tau: float | None = None
) -> np.ndarray:
    """Top-d non-trivial eigenvectors of the regularised D_t^-1/2 (C + t/n 11^T) D_t^-1/2, D_t = D + t (Qin & Rohe 2013).

    C counts co-occurrences in the training part. Without t (default: the mean degree) the leading
    eigenvectors of a sparse graph sit on a few peripheral items and eigenvalue 1 repeats once per
    connected component (a basis the solver picks at random); with it the graph is connected, the
    trivial eigenvector sqrt(D_t) is the only one at 1 and is dropped. Returns (n_items + 1, d), row 0
    zero, scaled to std d^-1/2 like the default initialisation, independent of the solver's start.
    """
    n = n_items + 1
    co = cooccurrence_matrix(train, n, window)
    deg = np.asarray(co.sum(1)).ravel()
    tau = max(float(deg[1:].mean()), 1.0) if tau is None else tau
    s = 1.0 / np.sqrt(deg + tau)
    s[0] = 0.0  # padding stays outside the graph

    def matvec(x: np.ndarray) -> np.ndarray:
        y = s * np.ravel(x)
        return s * (co @ y + tau / n_items * y.sum())

    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(n)
    out = rng.standard_normal((n, d)) * d**-0.5  # what a tiny catalogue has no eigenvectors for
    if n >= 4:
        op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
        vals, vecs = eigsh(op, k=min(d + 1, n - 2), which="LA", v0=v0)
        vecs = fix_signs(vecs[:, np.argsort(-vals)][:, 1 : d + 1])
        out[:, : vecs.shape[1]] = vecs / (vecs[1:].std() + 1e-12) * d**-0.5
    out[0] = 0
    return out.astype(np.float32)


def warm_start_ids(model, train: list[np.ndarray]) -> bool:
    """Copy the co-occurrence embeddings into the ID table when the config asks for it."""
    import torch

    if model.item_id is None or model.cfg.id_init != "cooccurrence" or not train:
        return False
    vecs = cooccurrence_embeddings(train, model.cfg.n_items, model.cfg.d)
    with torch.no_grad():
        model.item_id.weight.copy_(torch.from_numpy(vecs))
    return True
