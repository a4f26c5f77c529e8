"""The Markov prior (training/seqrec/transitions.py) on hand-computed counts, its weight's choice, its checkpoint."""

import math

import numpy as np
import pytest
import torch

from training.seqrec.checkpoint import MARKOV, load_model, save_model
from training.seqrec.data import EvalSet
from training.seqrec.evaluate import evaluate
from training.seqrec.transitions import (
    PRIOR_GRID,
    MarkovMixed,
    TransitionCounts,
    add_markov_prior,
    choose_prior_weight,
    prior_of,
    without_prior,
)

from .test_seqrec_units import small_model

L2, L3 = math.log(2), math.log(3)


def test_transition_counts_by_hand():
    seqs = [np.array([1, 2, 3]), np.array([2, 3]), np.array([1, 3]), np.array([4])]
    one = TransitionCounts.from_sequences(seqs, n_items=4, window=1)
    dense = torch.zeros(5, 5)
    dense[1, 2], dense[1, 3], dense[2, 3] = L2, L2, L3  # (1,2) once, (1,3) once, (2,3) twice
    assert torch.allclose(one.prior(torch.arange(5).view(-1, 1), order=1, decay=1.0), dense)
    two = TransitionCounts.from_sequences(seqs, n_items=4, window=2)  # + (1, 3) two steps apart in [1, 2, 3]
    assert two.prior(torch.tensor([[1]]), 1, 1.0)[0].tolist() == pytest.approx([0, 0, L2, L3, 0])
    # order 2, decay 0.5: the last item's row + 0.5 x the one before; padding (0) adds nothing
    seq = torch.tensor([[1, 2], [0, 2], [0, 0]])
    want = torch.tensor([[0, 0, 0.5 * L2, L3 + 0.5 * L3, 0], [0, 0, 0, L3, 0], [0.0] * 5])
    assert torch.allclose(two.prior(seq, order=2, decay=0.5), want)
    assert torch.allclose(two.prior(seq, order=5, decay=0.5), want)  # orders beyond the sequence read nothing
    with pytest.raises(ValueError, match="window"):
        TransitionCounts.from_sequences(seqs, 4, 0)
    with pytest.raises(ValueError, match="outside 1..4"):  # a corrupted file is refused, not indexed out of range
        TransitionCounts(two.indptr, two.indices + 2, two.values, 2)
    with pytest.raises(ValueError, match="NaN"):
        TransitionCounts(two.indptr, two.indices, two.values * float("nan"), 2)


def test_markov_mixed_adds_the_weighted_prior_in_every_scoring_path():
    model = small_model(modalities=["id", "text"], text_dim=8).eval()
    rng = np.random.default_rng(0)
    counts = TransitionCounts.from_sequences([rng.integers(1, 31, 8) for _ in range(50)], 30, window=3)
    mixed = MarkovMixed(model, counts, weight=1.5, order=3, decay=0.7)
    seq = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 6]])
    with torch.no_grad():
        base, full = model.full_sort_predict(seq), mixed.full_sort_predict(seq)
        prior = counts.prior(seq, 3, 0.7)
        assert prior.abs().sum() > 0 and torch.isneginf(full[:, 0]).all()
        assert torch.allclose(full[:, 1:], base[:, 1:] + 1.5 * prior[:, 1:])
        cand = torch.tensor([[3, 7, 9], [1, 2, 30]])
        assert torch.allclose(mixed.predict(seq, cand), full.gather(1, cand), atol=1e-5)
        assert torch.equal(prior_of(mixed, seq), 1.5 * prior) and prior_of(model, seq) is None
        tables = mixed.item_tables()
        hidden = {m: h[:, -1] for m, h in mixed.encode(seq, tables).items()}
        assert torch.allclose(mixed.fuse(hidden, tables)[:, 1:] + prior_of(mixed, seq)[:, 1:], full[:, 1:], atol=1e-5)
    assert without_prior(mixed) is model and without_prior(model) is model
    with pytest.raises(ValueError, match="transition counts over 4 items"):
        MarkovMixed(model, TransitionCounts.from_sequences([np.array([1, 2])], 4, 1), 1.0, 3, 0.7)
    with pytest.raises(ValueError, match="decay"):
        MarkovMixed(model, counts, 1.0, 3, 0.0)


def test_the_prior_weight_is_chosen_on_validation_by_hand():
    """One item sequence [1]; every model score 0 but the targets' ranks by id order; the prior reaches item 3."""

    class Flat(torch.nn.Module):  # scores 10 - j / 100: item 1 first, item 30 last, the prior decides the rest
        cfg = small_model().cfg

        def full_sort_predict(self, seq):
            s = (10 - torch.arange(31.0) / 100).repeat(len(seq), 1)
            s[:, 0] = float("-inf")
            return s

        def parameters(self):
            return iter([torch.zeros(1)])

    counts = TransitionCounts.from_sequences([np.array([1, 3])] * 3, 30, window=1)  # log(4) on (1, 3)
    valid = EvalSet.build([np.array([1])] * 3, np.array([3, 3, 2]), np.arange(3), max_len=5)
    weight, scores = choose_prior_weight(Flat(), counts, valid, order=1, decay=1.0, grid=(0.0, 0.001, 1.0, 2.0))
    # history item 1 is masked; w 0: ranks 2, 2, 1 (target 3 behind 2); w > 0.01 / log 4: 1, 1, 2 (3 passes 2)
    assert scores[0.0] == pytest.approx((2 / math.log2(3) + 1) / 3)
    assert scores[0.001] == scores[0.0]  # too small to pass item 2 (a gap of 0.01)
    assert scores[1.0] == scores[2.0] == pytest.approx((2 + 1 / math.log2(3)) / 3)
    assert weight == 1.0  # the best; of equals, the smaller weight


def test_choosing_the_weight_in_one_pass_equals_evaluating_each_mix():
    model = small_model(modalities=["id", "text"], text_dim=8).eval()
    rng = np.random.default_rng(1)
    seqs = [rng.integers(1, 31, rng.integers(2, 9)) for _ in range(60)]
    counts = TransitionCounts.from_sequences(seqs, 30, window=3)
    valid = EvalSet.build([s[:-1] for s in seqs[:40]], np.array([s[-1] for s in seqs[:40]]), np.arange(40), 8)
    _, scores = choose_prior_weight(model, counts, valid, 3, 0.7)
    assert set(scores) == set(PRIOR_GRID) and len(set(scores.values())) > 1
    for g in PRIOR_GRID[1:]:
        assert scores[g] == pytest.approx(evaluate(MarkovMixed(model, counts, g, 3, 0.7), valid)["ndcg@10"])
    mixed, card = add_markov_prior(model, seqs, valid, order=3, window=3, decay=0.7)
    assert card["weight"] == max(PRIOR_GRID, key=lambda g: (scores[g], -g)) and card["transitions"] == len(
        counts.values
    )
    assert (mixed is model) == (card["weight"] == 0)


def test_a_prior_round_trips_a_checkpoint_with_a_snapshot_ensemble_inside(tmp_path):
    from training.seqrec.ensemble import SnapshotEnsemble, trained_member

    best = small_model(modalities=["id", "text"], text_dim=8).eval()
    torch.manual_seed(1)
    late = type(best)(best.cfg, text=best.text_feats.clone()).eval()
    counts = TransitionCounts.from_sequences([np.array([1, 2, 3, 4]), np.array([3, 4, 5])], 30, window=2)
    mixed = MarkovMixed(SnapshotEnsemble(best, late, 0.3), counts, 2.0, 2, 0.5)
    assert trained_member(mixed) is best
    seq = torch.tensor([[0, 1, 2, 3], [2, 3, 4, 5]])
    save_model(mixed, tmp_path / "m", {"note": "x"})
    back, meta = load_model(tmp_path / "m")
    assert isinstance(back, MarkovMixed) and isinstance(back.model, SnapshotEnsemble) and meta["note"] == "x"
    assert back.settings() == {"weight": 2.0, "order": 2, "decay": 0.5, "window": 2}
    with torch.no_grad():
        assert torch.allclose(back.full_sort_predict(seq)[:, 1:], mixed.full_sort_predict(seq)[:, 1:], atol=1e-5)
    (tmp_path / "m" / MARKOV).unlink()
    with pytest.raises(ValueError, match="transition counts"):
        load_model(tmp_path / "m")


def test_the_sparse_prior_holds_the_dense_one_row_by_row():
    from serving.model_holder import plus_prior

    rng = np.random.default_rng(2)
    counts = TransitionCounts.from_sequences([rng.integers(1, 31, 10) for _ in range(40)], 30, window=3)
    seq = torch.tensor([[0, 0, 0], [0, 3, 4], [5, 6, 7], [1, 1, 2]])
    dense = counts.prior(seq, 3, 0.7)
    rows = counts.sparse_prior(seq, 3, 0.7)
    assert len(rows[0][0]) == 0  # an empty history reaches nothing
    for r, (items, values) in enumerate(rows):
        assert np.array_equal(items, torch.nonzero(dense[r]).flatten().numpy())
        assert np.allclose(values, dense[r, items].numpy())
        ids = np.array([1, 2, 8, 9, 17, 30])  # sorted candidates, some reached
        want = np.arange(6.0) + dense[r, ids].numpy()
        assert np.allclose(plus_prior(ids, np.arange(6.0), items, values), want)
