"""Sequential track units: DPO loss, samplers, metrics (ties), model scoring, checkpoints, resume."""

import math

import numpy as np
import pytest
import torch

from training.metrics import auc_from_candidate_scores, metrics_from_ranks, ranks_from_scores
from training.seqrec.checkpoint import load_model, save_model
from training.seqrec.data import EvalSet, length_buckets, training_windows, trim
from training.seqrec.evaluate import full_ranking_ranks
from training.seqrec.losses import dpo_logit_loss
from training.seqrec.model import MultimodalSASRec, SeqRecConfig, SparseNoisyMoE, seen_items
from training.seqrec.samplers import (
    argmax_negatives,
    random_negatives,
    stochastic_topk_negatives,
    topk_excluding,
)
from training.seqrec.trainer import SeqRecTrainer

from .helpers import dpo_config, sft_config


def test_dpo_loss_hand_computed_and_log2_at_reference():
    pw, pl, rw, rl = torch.tensor([2.0]), torch.tensor([0.5]), torch.tensor([1.0]), torch.tensor([0.8])
    expected = -math.log(1 / (1 + math.exp(-0.5 * ((2.0 - 0.5) - (1.0 - 0.8)))))
    assert dpo_logit_loss(pw, pl, rw, rl, beta=0.5).item() == pytest.approx(expected, rel=1e-6)
    same = dpo_logit_loss(pw, pl, pw, pl, beta=1.0)
    assert same.item() == pytest.approx(math.log(2), rel=1e-6)


def test_topk_sampler_never_returns_target_and_stays_in_topk():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 200, generator=g)
    scores[:, 0] = float("-inf")
    target = scores[:, 1:].argmax(1) + 1  # make the target the best item: the hardest case for exclusion
    for _ in range(20):
        neg = stochastic_topk_negatives(scores, target, k=10, generator=g)
        assert (neg != target).all() and (neg != 0).all()
        masked = scores.clone()
        masked.scatter_(1, target[:, None], float("-inf"))
        top = masked.topk(10, 1).indices
        assert (top == neg[:, None]).any(1).all()
    draws = torch.stack([stochastic_topk_negatives(scores, target, k=10, generator=g) for _ in range(200)])
    assert (draws[:, 0].unique().numel()) > 5  # stochastic: not one fixed item


def test_topk_excluding_equals_topk_of_the_masked_scores():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(300, 80, generator=g)
    scores[:100, 0] = 10.0  # padding best: must still be excluded
    target = torch.randint(1, 80, (300,), generator=g)
    target[100:200] = scores[100:200, 1:].argmax(1) + 1  # target best
    masked = scores.clone()
    masked[:, 0] = float("-inf")
    masked.scatter_(1, target[:, None], float("-inf"))
    for k in (1, 10, 78):
        assert torch.equal(topk_excluding(scores, target, k), masked.topk(k, 1).indices)
    small = stochastic_topk_negatives(
        scores[:, :6], target.clamp(max=5), k=50
    )  # K above the catalogue: every other item
    assert ((small != 0) & (small != target.clamp(max=5))).all()


def test_argmax_returns_hardest_non_target_and_random_excludes_target():
    scores = torch.tensor([[float("-inf"), 5.0, 9.0, 7.0, 1.0]])
    assert argmax_negatives(scores, torch.tensor([2])).item() == 3
    assert argmax_negatives(scores, torch.tensor([1])).item() == 2
    g = torch.Generator().manual_seed(1)
    neg = torch.cat([random_negatives(scores.expand(500, -1), torch.full((500,), 3), generator=g)])
    assert set(neg.tolist()) == {1, 2, 4}


def test_metrics_on_hand_computed_ranks_with_ties():
    scores = torch.tensor(
        [
            [0.0, 3.0, 1.0, 2.0, 2.0],  # target 3 ties with item 4: rank 3 (pessimistic)
            [0.0, 1.0, 1.0, 1.0, 1.0],  # constant scorer: last of the four items
            [0.0, 9.0, 1.0, 2.0, 3.0],
        ]
    )  # target 1: rank 1
    ranks = ranks_from_scores(scores, torch.tensor([3, 2, 1]))
    assert ranks.tolist() == [3, 4, 1]
    m = metrics_from_ranks(np.array([1, 3, 11]), ks=(10,))
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3) / 3)
    assert auc_from_candidate_scores([2.0], [[1.0, 2.0, 3.0]]) == pytest.approx(0.5)


def test_training_windows_cover_every_target_once():
    seqs = [np.arange(1, 8), np.arange(1, 130)]
    x, y = training_windows(seqs, max_len=50)
    assert (y > 0).sum().item() == 6 + 128
    # every target is the item after its input position
    for row_x, row_y in zip(x, y):
        valid = row_y > 0
        assert torch.equal(row_y[valid][:-1], row_x[valid][1:])


def small_model(**kw):
    torch.manual_seed(0)
    kw = {"dropout": 0.0, "attn_dropout": 0.0, "id_dropout": 0.0, **kw}  # deterministic unless a test asks
    cfg = SeqRecConfig(n_items=30, d=16, n_layers=1, n_heads=2, inner=32, **kw)
    text = torch.randn(31, 8) if "text" in cfg.modalities else None
    if text is not None:
        text[0] = 0
        text[5] = 0  # item 5 has no text: it uses the learned missing vector
    return MultimodalSASRec(cfg, text=text)


def test_full_sort_predict_is_one_product_and_matches_predict():
    m = small_model(modalities=["id", "text"], text_dim=8, moe=True)
    m.eval()
    seq = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 6]])
    full = m.full_sort_predict(seq)
    assert full.shape == (2, 31) and torch.isinf(full[:, 0]).all()
    cand = torch.tensor([[3, 7, 9], [1, 2, 30]])
    assert torch.allclose(m.predict(seq, cand), full.gather(1, cand), atol=1e-5)
    # left padding is invisible: trimming the padding column changes nothing
    assert torch.allclose(m.full_sort_predict(seq[:1, 2:]), full[:1], atol=1e-5)
    # Eq. 3 term by term: s = s_id + a_txt * s_txt, with a learnable a_txt
    with torch.no_grad():
        m.alpha["text"].fill_(0.37)
        tables = m.item_tables()
        hidden = {k: h[:, -1] for k, h in m.encode(seq, tables).items()}
        by_terms = hidden["id"] @ tables["id"].T + 0.37 * (hidden["text"] @ tables["text"].T)
        assert torch.allclose(m.fuse(hidden, tables), by_terms, atol=1e-5)


def test_temperature_scores_are_cosines_over_the_temperature_in_every_path():
    m = small_model(modalities=["id", "text"], text_dim=8, temperature=0.25)
    m.eval()
    seq = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 6]])
    with torch.no_grad():
        m.alpha["text"].fill_(0.37)
        tables = m.item_tables()
        h = {k: v[:, -1] for k, v in m.encode(seq, tables).items()}
        q = torch.cat([h["id"], 0.37 * h["text"]], 1)
        e = torch.cat([tables["id"], tables["text"]], 1)
        cos = (q / q.norm(dim=1, keepdim=True)) @ (e / e.norm(dim=1, keepdim=True)).T
        full = m.full_sort_predict(seq)
    torch.testing.assert_close(full[:, 1:], cos[:, 1:] / 0.25)
    assert full[:, 1:].abs().max() <= 4.0 + 1e-5
    cand = torch.tensor([[3, 7, 9], [1, 2, 30]])
    torch.testing.assert_close(m.predict(seq, cand), full.gather(1, cand))  # candidates and serving: same scores


def test_moe_routes_to_top_k_and_has_balance_loss():
    moe = SparseNoisyMoE(8, n_experts=4, top_k=2)
    moe.train()
    x = torch.randn(10, 8)
    g = moe.gates(x)
    assert ((g > 0).sum(-1) == 2).all() and torch.allclose(g.sum(-1), torch.ones(10))
    moe(x)
    assert moe.aux_loss.item() > 0


def test_checkpoint_roundtrip_and_corrupt_file_refused(tmp_path):
    m = small_model(modalities=["id", "text"], text_dim=8)
    save_model(m, tmp_path / "m")
    loaded, meta = load_model(tmp_path / "m")
    seq = torch.tensor([[1, 2, 3]])
    m.eval()
    assert torch.allclose(loaded.full_sort_predict(seq), m.full_sort_predict(seq))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage" * 10)
    from safetensors import SafetensorError

    with pytest.raises(SafetensorError):
        load_model(tmp_path / "m")


def _toy_data():
    rng = np.random.default_rng(0)
    seqs = [np.array([(s + i) % 30 + 1 for i in range(rng.integers(5, 12))]) for s in rng.integers(0, 30, 120)]
    x, y = training_windows([s[:-2] for s in seqs], 20)
    valid = EvalSet.build([s[:-2] for s in seqs], np.array([s[-2] for s in seqs]), np.arange(120), 20)
    return x, y, valid


@pytest.mark.parametrize(
    "schedule,average",
    [
        ("constant", {}),
        ("cosine", {}),
        ("constant", {"ema_decay": 0.9}),
        ("constant", {"swa_last": 7}),  # the trailing window (the default): its snapshots resume with the state
        ("constant", {"swa_last": 3, "swa_window": "tail"}),
    ],
)
def test_training_is_deterministic_learns_and_resumes(tmp_path, schedule, average):
    x, y, valid = _toy_data()
    cfg = sft_config(
        epochs=8, batch_size=16, lr=1e-2, show_progress=False, patience=10, lr_schedule=schedule, **average
    )
    a = SeqRecTrainer(small_model(), cfg, x, y, valid).fit()
    b = SeqRecTrainer(small_model(), cfg, x, y, valid).fit()
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    assert a["best"]["ndcg@10"] > 0.5  # successor structure learned (random scoring: about 0.15)

    # killed after epoch 3 ends, resumed from the last saved state: the same history as one uninterrupted run
    class Killed(Exception):
        pass

    def kill_at_epoch_3(row):
        if row["epoch"] == 3:
            raise Killed  # before epoch 3's state is saved: the resume starts from epoch 2's

    with pytest.raises(Killed):
        SeqRecTrainer(small_model(), cfg, x, y, valid, checkpoint_dir=tmp_path, on_epoch=kill_at_epoch_3).fit()
    resumed = SeqRecTrainer(small_model(), cfg, x, y, valid, checkpoint_dir=tmp_path).fit()
    assert [round(r["loss"], 6) for r in resumed["history"]] == [round(r["loss"], 6) for r in a["history"]]
    assert [r["valid_ndcg@10"] for r in resumed["history"]] == pytest.approx([r["valid_ndcg@10"] for r in a["history"]])


def test_cosine_schedule_decays_from_lr_to_zero():
    x, y, valid = _toy_data()
    t = SeqRecTrainer(small_model(), sft_config(epochs=4, lr=0.01, lr_schedule="cosine"), x, y, valid)
    lrs = [t.learning_rate(e, s, 10) for e in range(4) for s in range(10)]
    assert lrs[0] == pytest.approx(0.01) and lrs[20] == pytest.approx(0.005) and lrs[-1] < 0.01 * 0.01
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    flat = SeqRecTrainer(small_model(), sft_config(epochs=4, lr=0.01), x, y, valid)
    assert {flat.learning_rate(e, 3, 10) for e in range(4)} == {0.01}
    with pytest.raises(ValueError, match="lr_schedule"):
        sft_config(lr_schedule="step")


def test_weight_decay_shrinks_matrices_and_tables_by_lr_times_decay_and_spares_biases_and_gains():
    x, y, valid = _toy_data()
    t = SeqRecTrainer(small_model(), sft_config(lr=0.01, weight_decay=0.5), x, y, valid)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    for p in t.model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: Adam's step is 0, only the decoupled decay moves a weight
    t.optimizer.step()
    after = t.model.state_dict()
    assert torch.equal(after["item_id.weight"], before["item_id.weight"] * (1 - 0.01 * 0.5))
    gains = [
        k
        for k, v in before.items()
        if v.ndim == 1 and v.dtype.is_floating_point and k in dict(t.model.named_parameters())
    ]
    assert gains and all(torch.equal(after[k], before[k]) for k in gains)


def test_ema_validates_the_weight_average_and_keeps_it():
    x, y, valid = _toy_data()
    t = SeqRecTrainer(
        small_model(), sft_config(epochs=2, batch_size=16, lr=1e-2, ema_decay=0.9, show_progress=False), x, y, valid
    )
    t.fit()
    assert t.eval_model is t.average.module and int(t.average.n_averaged) == 2 * len(length_buckets(x, 16))
    best = t.history[t.best["epoch"]]["valid_ndcg@10"]
    from training.seqrec.evaluate import evaluate

    assert evaluate(t.model, valid)["ndcg@10"] == pytest.approx(best)  # the kept weights are the validated average


def _weights_after_each_epoch(cfg: dict, x, y, valid) -> list[dict]:
    """The raw weights after every epoch of a run without averaging."""
    snaps = []

    class Snapshots(SeqRecTrainer):
        def train_epoch(self, epoch):
            out = super().train_epoch(epoch)
            snaps.append({k: v.detach().clone() for k, v in self.model.named_parameters()})
            return out

    Snapshots(small_model(), sft_config(**cfg), x, y, valid).fit()
    return snaps


def test_swa_keeps_the_uniform_average_of_the_weights_after_the_last_epochs():
    x, y, valid = _toy_data()
    cfg = dict(epochs=4, batch_size=16, lr=5e-2, keep="last", show_progress=False)
    snaps = _weights_after_each_epoch(cfg, x, y, valid)
    t = SeqRecTrainer(small_model(), sft_config(**cfg, swa_last=2, swa_window="tail"), x, y, valid)
    out = t.fit()
    assert [r.get("swa_epochs") for r in out["history"]] == [None, None, 1, 2]
    for k, v in t.model.named_parameters():  # the kept weights: mean of the weights after epochs 3 and 4
        torch.testing.assert_close(v, (snaps[2][k] + snaps[3][k]) / 2)
    assert not torch.equal(snaps[2]["item_id.weight"], snaps[3]["item_id.weight"])
    from training.seqrec.evaluate import evaluate

    assert evaluate(t.model, valid)["ndcg@10"] == pytest.approx(out["history"][-1]["valid_ndcg@10"])  # validated = kept
    tail = dict(swa_window="tail")
    assert sft_config(epochs=4, swa_last=9, **tail).swa_start == 1
    assert sft_config(epochs=15, swa_last=7, **tail).swa_start == 9
    with pytest.raises(ValueError, match="swa_last"):
        sft_config(epochs=4, swa_last=0)
    with pytest.raises(ValueError, match="one"):
        sft_config(epochs=4, swa_last=2, ema_decay=0.9)


def test_trailing_swa_validates_the_window_average_after_every_epoch_and_keeps_the_best_window():
    x, y, valid = _toy_data()
    cfg = dict(epochs=4, batch_size=16, lr=5e-2, show_progress=False)
    snaps = _weights_after_each_epoch(cfg, x, y, valid)
    t = SeqRecTrainer(small_model(), sft_config(**cfg, swa_last=2, swa_window="trailing"), x, y, valid)
    out = t.fit()
    assert [r["swa_epochs"] for r in out["history"]] == [1, 2, 2, 2] and t.cfg.swa_start is None
    best = out["best"]["epoch"]
    window = [e for e in (best - 1, best) if e >= 0]
    for k, v in t.model.named_parameters():  # kept = mean of the best window's epochs
        torch.testing.assert_close(v, sum(snaps[e][k] for e in window) / len(window))
    from training.seqrec.evaluate import evaluate

    valid_scores = [r["valid_ndcg@10"] for r in out["history"]]
    assert evaluate(t.model, valid)["ndcg@10"] == pytest.approx(max(valid_scores))
    with pytest.raises(ValueError, match="swa_window"):
        sft_config(swa_window="middle")


def test_keep_last_trains_every_epoch_and_keeps_the_final_weights():
    x, y, valid = _toy_data()
    cfg = dict(
        epochs=5,
        batch_size=16,
        lr=0.2,
        show_progress=False,
        patience=1,
        seed=0,  # validation goes up, then down
        mask_history=False,
    )
    best = SeqRecTrainer(small_model(), sft_config(**cfg), x, y, valid).fit()
    assert best["epochs_run"] < 5  # early stopping did stop this run
    t = SeqRecTrainer(small_model(), sft_config(**cfg, keep="last"), x, y, valid)
    last = t.fit()
    assert last["epochs_run"] == 5 and last["kept_epoch"] == 4  # a fixed-length warm-up ignores patience
    assert [r["loss"] for r in last["history"][: best["epochs_run"]]] == [r["loss"] for r in best["history"]]
    from training.seqrec.evaluate import evaluate

    final = last["history"][-1]["valid_ndcg@10"]
    assert evaluate(t.model, valid)["ndcg@10"] == pytest.approx(final)
    assert final < last["best"]["ndcg@10"]  # the kept weights are the last ones, not the best-validated
    with pytest.raises(ValueError, match="keep"):
        sft_config(keep="first")


def test_dpo_stage_keeps_reference_frozen():
    x, y, valid = _toy_data()
    sft = SeqRecTrainer(small_model(), sft_config(epochs=2, batch_size=32, lr=5e-3, show_progress=False), x, y, valid)
    sft.fit()
    import copy

    ref = copy.deepcopy(sft.model)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    dpo = SeqRecTrainer(
        copy.deepcopy(sft.model),
        dpo_config(epochs=1, batch_size=32, topk=5, show_progress=False),
        x,
        y,
        valid,
        reference=ref,
    )
    out = dpo.fit()
    assert "dpo" in out["history"][0] and out["history"][0]["dpo"] > 0
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())


def test_sft_weight_scales_the_ce_term_of_stage_2():
    """L = sft_weight * CE + lam * DPO: at 0 the loss is the preference term alone (DPO as trl trains it)."""
    x, y, _ = _toy_data()
    ref = small_model()
    seq, tgt = trim(x[:16], y[:16])
    losses = {}
    for w in (1.0, 0.0, 0.5):
        t = SeqRecTrainer(
            small_model(), dpo_config(topk=5, lam=2.0, sft_weight=w, show_progress=False), x, y, None, reference=ref
        )
        t.model.eval()
        t.generator.manual_seed(3)  # the same y_l drawn for each weight
        losses[w] = t.compute_loss(seq, tgt)
    (l1, p1), (l0, p0), (lh, _) = losses[1.0], losses[0.0], losses[0.5]
    assert p1["dpo"] == pytest.approx(p0["dpo"]) and p1["ce"] == pytest.approx(p0["ce"])
    assert l1.item() == pytest.approx(p1["ce"] + 2.0 * p1["dpo"], rel=1e-5)
    assert l0.item() == pytest.approx(2.0 * p0["dpo"], rel=1e-5)
    assert lh.item() == pytest.approx(0.5 * p1["ce"] + 2.0 * p1["dpo"], rel=1e-5)
    assert p0["dpo"] == pytest.approx(math.log(2), rel=1e-5)  # policy = reference, no dropout: the margins are 0
    with pytest.raises(ValueError, match="sft_weight"):
        dpo_config(sft_weight=-1.0)


def test_precomputed_reference_gives_the_reference_margins_of_the_batch():
    rng = np.random.default_rng(1)
    seqs = [rng.integers(1, 31, rng.integers(3, 46)) for _ in range(60)]  # up to 45 items: several windows each
    x, y = training_windows(seqs, 20)
    ref = small_model(modalities=["id", "text"], text_dim=8, moe=True)
    with torch.no_grad():
        ref.alpha["text"].fill_(0.6)
    cfg = dpo_config(epochs=1, batch_size=8, show_progress=False)
    t = SeqRecTrainer(small_model(modalities=["id", "text"], text_dim=8, moe=True), cfg, x, y, None, reference=ref)
    cache = t.precompute_reference(batch_size=7)
    assert len(cache["queries"]) == (y > 0).sum() and not cache["queries"].isnan().any()  # every position written
    t.reference_cache = cache
    for rows in length_buckets(x, 8, torch.Generator().manual_seed(0)):
        seq, tgt = trim(x[rows], y[rows])
        pos, neg = tgt[tgt > 0], torch.randint(1, 31, ((tgt > 0).sum(),))
        cached = t.reference_margin(seq, tgt, pos, neg, rows)
        assert torch.allclose(cached, t.reference_margin(seq, tgt, pos, neg), atol=1e-5)
    # a DPO run reading the cache follows the run that encodes the reference every step
    x, y, valid = _toy_data()
    runs = [
        SeqRecTrainer(
            small_model(),
            dpo_config(epochs=2, batch_size=16, topk=5, show_progress=False, precompute_ref=p),
            x,
            y,
            valid,
            reference=small_model(),
        ).fit()
        for p in (True, False)
    ]
    assert [r["loss"] for r in runs[0]["history"]] == pytest.approx([r["loss"] for r in runs[1]["history"]], abs=1e-5)


def test_history_masking_in_full_ranking():
    m = small_model()
    es = EvalSet.build([np.array([1, 2, 3])], np.array([2]), np.array([7]), 10)  # target repeats a history item
    rank_masked = full_ranking_ranks(m, es)
    assert rank_masked[0] <= 30 - 2  # items 1 and 3 are masked; the target itself stays rankable


def test_mask_history_hides_each_prefix_from_the_softmax_and_the_negative_pool():
    # window 0: left-padded [_, 4, 5, 6] -> targets [_, 5, 6, 4] (the last target repeats item 4: kept rankable);
    # window 1: [7, 8, 9, 10] -> [8, 9, 10, 0] (last position padded: no row)
    seq = torch.tensor([[0, 4, 5, 6], [7, 8, 9, 10]])
    tgt = torch.tensor([[0, 5, 6, 4], [8, 9, 10, 0]])
    rows, cols = seen_items(seq, tgt)
    seen = sorted(zip(rows.tolist(), cols.tolist()))
    assert seen == [(0, 4), (1, 4), (1, 5), (2, 5), (2, 6), (3, 7), (4, 7), (4, 8), (5, 7), (5, 8), (5, 9)]
    m = small_model()
    plain, t = m.position_logits(seq, tgt)
    masked, t2 = m.position_logits(seq, tgt, mask_seen=True)
    assert torch.equal(t, t2) and torch.isinf(masked[rows, cols]).all()
    keep = torch.ones_like(plain, dtype=torch.bool)
    keep[rows, cols] = False
    assert torch.equal(masked[keep], plain[keep])  # nothing else moves; the repeated target 4 of row 2 stays finite
    assert torch.isfinite(masked.gather(1, t[:, None])).all()
    neg = stochastic_topk_negatives(masked, t, k=5, generator=torch.Generator().manual_seed(0))
    assert not ((rows[:, None] == torch.arange(len(t))) & (cols[:, None] == neg)).any()
    # a training run with the mask learns and its losses differ from the unmasked run's
    x, y, valid = _toy_data()
    runs = [
        SeqRecTrainer(
            small_model(),
            sft_config(epochs=2, batch_size=32, lr=5e-3, mask_history=mh, show_progress=False),
            x,
            y,
            valid,
        ).fit()
        for mh in (False, True)
    ]
    assert runs[1]["history"][-1]["loss"] < runs[1]["history"][0]["loss"]
    assert [r["loss"] for r in runs[1]["history"]] != [r["loss"] for r in runs[0]["history"]]
    assert torch.nn.functional.cross_entropy(masked, t) < torch.nn.functional.cross_entropy(
        plain, t
    )  # fewer competitors


def test_cooccurrence_warm_start_is_independent_of_the_solver_start_and_groups_co_occurring_items():
    from training.seqrec.warmstart import cooccurrence_embeddings

    rng = np.random.default_rng(0)
    # two item communities (1..40 and 41..80) that never co-occur, plus items 81..90 never in training
    train = [rng.choice(np.arange(1, 41) if u % 2 else np.arange(41, 81), size=rng.integers(4, 9)) for u in range(300)]
    a = cooccurrence_embeddings(train, n_items=90, d=8, seed=0)
    b = cooccurrence_embeddings(train, n_items=90, d=8, seed=1)  # another start vector for the eigensolver
    assert a.shape == (91, 8) and not a[0].any()
    assert a[1:].std() == pytest.approx(8**-0.5, rel=1e-3)
    np.testing.assert_allclose(a, b, atol=1e-4)  # signs fixed, no repeated eigenvalue left to rotate
    unit = a[1:81] / np.linalg.norm(a[1:81], axis=1, keepdims=True)
    cos = unit @ unit.T
    same = np.add.outer(np.arange(80) < 40, np.arange(80) < 40) != 1
    assert cos[same].mean() > cos[~same].mean() + 0.15, (cos[same].mean(), cos[~same].mean())


ALLOCATION_STEPS = """
import resource, sys, torch
from training.device import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "on" else False
q, table = torch.randn(2000, 64, requires_grad=True), torch.randn(12000, 64, requires_grad=True)
target = torch.randint(12000, (2000,))
def step():
    torch.nn.functional.cross_entropy(q @ table.T, target).backward()
step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_retain_freed_memory_stops_per_step_page_faults_of_large_logits():
    import os
    import subprocess
    import sys
    from pathlib import Path

    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", ALLOCATION_STEPS, mode],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
            env=os.environ | {"THP_MEM_ALLOC_ENABLE": "0"},  # glibc's 4 kB pages, what this test is about
        ).stdout.split()
        return out[0], int(out[1])

    (applied_off, off), (applied_on, on) = faults("off"), faults("on")
    assert (applied_off, applied_on) == ("False", "True")
    # ten steps over 96 MB logits: glibc maps and zeroes them afresh each step by default (~0.9M faults here)
    assert off > 10 * 96 * 256 * 0.8 and on < off / 3, (off, on)


TABLE_STEPS = """
import resource
import training  # noqa: F401  (sets THP_MEM_ALLOC_ENABLE unless the environment has it)
import torch
from training.seqrec.model import RowDropout
weight, drop = torch.nn.Parameter(torch.randn(1_000_001, 64)), RowDropout(0.2).train()
def step():
    drop(weight)[torch.randint(1_000_001, (20000,))].sum().backward()
step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _transparent_huge_pages() -> bool:
    from pathlib import Path

    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return mode.exists() and "[never]" not in mode.read_text()


@pytest.mark.skipif(not _transparent_huge_pages(), reason="the kernel has transparent huge pages off")
def test_table_sized_tensors_are_faulted_in_huge_pages():
    import os
    import subprocess
    import sys
    from pathlib import Path

    def faults(**env) -> int:
        run = subprocess.run(
            [sys.executable, "-c", TABLE_STEPS],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
            env={k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"} | env,
        )
        return int(run.stdout.split()[-1])

    off, on = faults(THP_MEM_ALLOC_ENABLE="0"), faults()
    # ten steps, each a fresh 256 MB dropped table and its gradient: 4 kB pages fault ~65k times per 256 MB
    assert off > 10 * 65_000 and on < off / 10, (off, on)


FREED_EARLIER = """
import re
from training.device import retain_freed_memory
rss = lambda: int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024
blocks = [bytearray(16384) for _ in range(40000)]  # 640 MB of heap chunks, every 20th kept: nothing to trim at the top
kept = blocks[::20]
del blocks
before = rss()
retain_freed_memory()
print(before, rss())
"""


def test_retain_freed_memory_first_returns_what_earlier_work_freed():
    import subprocess
    import sys
    from pathlib import Path

    before, after = map(
        int,
        subprocess.run(
            [sys.executable, "-c", FREED_EARLIER],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
        ).stdout.split(),
    )
    assert before > 500 and after < before - 300, (before, after)  # MB resident before and after


def test_attributes_add_their_mean_embedding_to_the_id_table_and_survive_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    attrs = torch.zeros(31, 3, dtype=torch.long)
    attrs[1:] = torch.randint(0, 6, (30, 3))
    attrs[7] = torch.tensor([2, 0, 0])
    attrs[3] = torch.tensor([1, 4, 0])
    attrs[8] = 0  # no attributes: its e_id is the ID embedding alone
    cfg = SeqRecConfig(
        n_items=30,
        d=16,
        n_layers=1,
        n_heads=2,
        inner=32,
        dropout=0.0,
        attn_dropout=0.0,
        id_dropout=0.0,
        attributes=True,
        n_attributes=5,
    )
    m = MultimodalSASRec(cfg, attributes=attrs)
    assert torch.equal(m.item_table("id"), m.item_id.weight)  # zero-initialised: the warm start is kept as is
    with torch.no_grad():
        m.attr_emb.weight[1:] = torch.randn(5, 16)
    table, w = m.item_table("id"), m.attr_emb.weight
    assert torch.allclose(table[7], m.item_id.weight[7] + w[2])
    assert torch.allclose(table[3], m.item_id.weight[3] + (w[1] + w[4]) / 2)  # the mean skips the padding id
    assert torch.equal(table[8], m.item_id.weight[8]) and torch.equal(table[0], m.item_id.weight[0])
    seq, tgt = torch.tensor([[0, 7, 3, 4]]), torch.tensor([[0, 3, 4, 7]])
    m.calculate_loss(seq, tgt).backward()
    used = torch.unique(attrs[[3, 4, 7]])
    assert m.attr_emb.weight.grad[used[used > 0]].abs().sum(1).gt(0).all()
    m.eval()
    save_model(m, tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    assert torch.equal(loaded.item_attrs, attrs) and torch.allclose(
        loaded.full_sort_predict(seq), m.full_sort_predict(seq)
    )
    with pytest.raises(ValueError, match="ids in 0..5"):
        MultimodalSASRec(cfg, attributes=attrs + 5)


def test_attribute_means_match_embedding_bag_in_value_and_gradient_and_follow_a_loaded_state():
    import copy

    import torch.nn.functional as F

    torch.manual_seed(0)
    attrs = torch.randint(0, 9, (41, 4))
    attrs[0], attrs[5] = 0, torch.tensor([3, 3, 0, 0])  # padding row; a repeated id counts twice, as in a bag
    cfg = SeqRecConfig(n_items=40, d=8, n_layers=1, n_heads=2, inner=16, attributes=True, n_attributes=8)
    m = MultimodalSASRec(cfg, attributes=attrs)
    w = torch.randn(9, 8, requires_grad=True)
    with torch.no_grad():
        m.attr_emb.weight.copy_(w)
    grad_out = torch.randn(41, 8)
    bag = F.embedding_bag(attrs, w, mode="mean", padding_idx=0)
    (bag * grad_out).sum().backward()
    means = m.attribute_means()
    (means * grad_out).sum().backward()
    assert torch.allclose(means, bag, atol=1e-6)
    assert torch.allclose(m.attr_emb.weight.grad, w.grad, atol=1e-5)
    copied = copy.deepcopy(m)  # an AveragedModel / the DPO reference deep-copy the model
    assert torch.allclose(copied.attribute_means(), bag, atol=1e-6)
    other = attrs.roll(1, 0)
    m.load_state_dict({**m.state_dict(), "item_attrs": other})  # copied in place: the sparse matrix follows
    assert torch.allclose(m.attribute_means(), F.embedding_bag(other, w, mode="mean", padding_idx=0), atol=1e-6)


def test_unrecorded_masks_give_the_gradient_of_the_recorded_masked_softmax():
    from training.seqrec.scores import PositionScores, seen_pairs

    torch.manual_seed(0)
    seq, tgt = torch.tensor([[0, 1, 2, 3], [4, 2, 5, 2]]), torch.tensor([[0, 2, 3, 4], [2, 5, 2, 6]])
    q, table = torch.randn(7, 5, requires_grad=True), torch.randn(7, 5, requires_grad=True)
    scored = PositionScores(q, table, tgt[tgt > 0], seq, tgt, mask_seen=True)
    torch.nn.functional.cross_entropy(scored.materialise(), scored.targets).backward()
    got = q.grad.clone(), table.grad.clone()
    q.grad = table.grad = None
    mask = torch.zeros(7, 7, dtype=torch.bool)
    mask[:, 0] = True
    mask[seen_pairs(seq, tgt)] = True
    assert mask.sum() > 7  # some prefix items are masked, not only the padding column
    torch.nn.functional.cross_entropy((q @ table.T).masked_fill(mask, float("-inf")), scored.targets).backward()
    assert torch.allclose(got[0], q.grad, atol=1e-6) and torch.allclose(got[1], table.grad, atol=1e-6)


@pytest.mark.parametrize("mask_seen,mask_future", [(False, False), (True, False), (True, True)])
def test_fused_cross_entropy_equals_the_masked_softmax_in_value_gradient_and_pool(mask_seen, mask_future):
    from training.seqrec.losses import full_cross_entropy
    from training.seqrec.samplers import topk_excluding
    from training.seqrec.scores import PositionScores

    torch.manual_seed(0)
    seq, tgt = torch.tensor([[0, 1, 2, 3], [4, 2, 5, 2]]), torch.tensor([[0, 2, 3, 4], [2, 5, 2, 6]])
    q, table = torch.randn(7, 5, requires_grad=True), torch.randn(7, 5, requires_grad=True)
    scored = PositionScores(q, table, tgt[tgt > 0], seq, tgt, mask_seen=mask_seen, mask_future=mask_future)
    dense = scored.materialise().detach()
    expected = torch.nn.functional.cross_entropy(scored.materialise(), scored.targets)
    (3.0 * expected).backward()  # an upstream gradient other than 1 (DDP scales each rank's loss)
    want = q.grad.clone(), table.grad.clone()
    q.grad = table.grad = None
    scored.logits = None
    got = full_cross_entropy(scored)
    finite = torch.isfinite(dense)
    shift = (scored.logits - dense.masked_fill(~finite, 0)).masked_fill(~finite, 0)  # read before the backward
    row_constant = shift.gather(1, scored.targets[:, None]).expand_as(shift)
    pools = topk_excluding(scored.logits, scored.targets, 3), topk_excluding(dense, scored.targets, 3)
    assert torch.allclose(shift[finite], row_constant[finite], atol=1e-6)  # log-softmax: each row shifted
    assert torch.equal(pools[0], pools[1]) and torch.isinf(scored.logits[~finite]).all()
    (3.0 * got).backward()
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.allclose(q.grad, want[0], atol=1e-6) and torch.allclose(table.grad, want[1], atol=1e-6)


def test_dropout_keeps_with_probability_one_minus_p_scales_and_turns_off():
    from training.seqrec.model import Dropout

    torch.manual_seed(0)
    drop, x = Dropout(0.3), torch.ones(200_000)
    y = drop(x)
    assert torch.unique(y).tolist() == [0.0, pytest.approx(1 / 0.7)]
    assert abs((y > 0).float().mean().item() - 0.7) < 0.005 and abs(y.mean().item() - 1.0) < 0.01
    x.requires_grad_(True)
    y = drop(x)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient passes where the mask kept, scaled alike
    assert torch.equal(drop.eval()(x), x)
    m = small_model(modalities=["id", "text"], text_dim=8)
    m.cfg.dropout = 0.3
    m.disable_dropout()
    assert all(d.p == 0.0 for d in m.modules() if isinstance(d, torch.nn.Dropout))


def test_a_complete_modality_keeps_its_placeholder_in_the_graph_and_the_same_item_rows():
    m = small_model(modalities=["id", "text"], text_dim=8)
    with torch.no_grad():
        m.text_feats[5] = torch.randn(8)
        m.text_has[5] = True  # every item has text now: the table skips the placeholder's where
    table = m.item_table("text")
    assert torch.allclose(table[1:], m.text_proj(m.text_feats[1:])) and torch.equal(table[0], m.text_missing)
    seq, tgt = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 2, 3, 4]])
    m.calculate_loss(seq, tgt, mask_seen=True).backward()
    assert m.text_missing.grad is not None and torch.equal(m.text_missing.grad, torch.zeros(16))  # DDP needs it


def test_later_chosen_draws_the_next_or_a_later_item_of_the_window_uniformly():
    from training.seqrec.scores import PositionScores
    from training.seqrec.trainer import later_chosen

    seq = torch.tensor([[0, 1, 2, 3, 4]])
    tgt = torch.tensor([[0, 2, 3, 4, 5]])  # positions 1..4 predict 2, 3, 4, 5
    scored = PositionScores(torch.zeros(4, 2), torch.zeros(6, 2), tgt[tgt > 0], seq, tgt)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([later_chosen(scored, g) for _ in range(4000)])  # (draws, positions)
    for row, allowed in enumerate([{2, 3, 4, 5}, {3, 4, 5}, {4, 5}, {5}]):
        values, counts = draws[:, row].unique(return_counts=True)
        assert set(values.tolist()) == allowed
        assert (counts / len(draws) - 1 / len(allowed)).abs().max() < 0.03  # uniform
    with pytest.raises(ValueError, match="chosen"):
        dpo_config(chosen="best")


def test_snapshot_ensemble_mixes_scores_and_takes_the_weight_validation_prefers():
    from types import SimpleNamespace

    from torch import nn

    from training.seqrec.data import EvalSet
    from training.seqrec.ensemble import SnapshotEnsemble, choose_late_weight

    class Fixed(nn.Module):  # the same scores for every context; item 4 is every user's history (masked)
        def __init__(self, scores):
            super().__init__()
            self.s, self.cfg = nn.Parameter(torch.tensor([float("-inf"), *scores, 9.0])), SimpleNamespace(n_items=4)

        def full_sort_predict(self, seq):
            return self.s.detach().expand(len(seq), -1).clone()

        def predict(self, seq, items):
            return self.s.detach()[items]

    best, late = Fixed([3.0, 2.0, 0.0]), Fixed([0.0, 1.0, 5.0])
    mix = SnapshotEnsemble(best, late, 0.4)  # 1.8, 1.6, 2.0
    assert mix.full_sort_predict(torch.ones(1, 1, dtype=torch.long))[0, 1:4].tolist() == pytest.approx([1.8, 1.6, 2.0])
    assert mix.predict(None, torch.tensor([[3, 2]]))[0].tolist() == pytest.approx([2.0, 1.6])
    assert torch.isneginf(SnapshotEnsemble(best, late, 1.0).full_sort_predict(torch.ones(1, 1, dtype=torch.long))[0, 0])
    valid = EvalSet.build([np.array([4])] * 3, np.array([3, 3, 1]), np.arange(3), max_len=5)
    weight, scores = choose_late_weight(best, late, valid, grid=(0.0, 0.4, 0.45, 1.0))
    # ranks of the targets: w 0 -> 3, 3, 1; w 0.4 and 0.45 -> 1, 1, 2; w 1 -> 1, 1, 3
    assert scores[0.0] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert scores[0.4] == scores[0.45] == pytest.approx((2 + 1 / np.log2(3)) / 3)
    assert scores[1.0] == pytest.approx(2.5 / 3)
    assert weight == 0.4  # the best validation NDCG@10; of equals, the smaller weight
    with pytest.raises(ValueError, match="late_weight"):
        SnapshotEnsemble(best, late, 1.5)


def test_choosing_the_weight_from_one_pass_per_member_equals_evaluating_each_mix():
    from training.seqrec.ensemble import MIX_GRID, SnapshotEnsemble, choose_late_weight
    from training.seqrec.evaluate import evaluate

    best = small_model(modalities=["id", "text"], text_dim=8)
    torch.manual_seed(3)
    late = small_model(modalities=["id", "text"], text_dim=8)
    with torch.no_grad():
        late.item_id.weight.add_(torch.randn_like(late.item_id.weight))
    rng = np.random.default_rng(0)
    hist = [rng.integers(1, 31, rng.integers(1, 7)) for _ in range(40)]
    valid = EvalSet.build(hist, rng.integers(1, 31, 40), np.arange(40), max_len=8)
    _, scores = choose_late_weight(best, late, valid)
    assert scores == {w: evaluate(SnapshotEnsemble(best, late, w), valid)["ndcg@10"] for w in MIX_GRID}
    assert len(set(scores.values())) > 1  # the weights rank differently


def test_snapshot_ensemble_is_one_inner_product_model_and_round_trips_a_checkpoint(tmp_path):
    from serving.model_holder import precompute_top, precompute_users
    from training.seqrec.ensemble import SnapshotEnsemble

    best = small_model(modalities=["id", "text"], text_dim=8, temperature=0.1).eval()
    torch.manual_seed(1)
    late = MultimodalSASRec(best.cfg, text=best.text_feats.clone()).eval()
    mix = SnapshotEnsemble(best, late, 0.3)
    seq = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 6]])
    with torch.no_grad():
        full = mix.full_sort_predict(seq)
        want = 0.7 * best.full_sort_predict(seq)[:, 1:] + 0.3 * late.full_sort_predict(seq)[:, 1:]
        assert torch.allclose(full[:, 1:], want, atol=1e-5)
        tables = mix.item_tables()
        assert set(tables) == {"best.id", "best.text", "late.id", "late.text"}
        hidden = mix.encode(seq, tables)
        # the serving path: [(1-w) q_b, w q_l] . [E_b, E_l] is the mix of the members' scores
        fused = mix.query({m: h[:, -1] for m, h in hidden.items()}) @ mix.fused_table(tables).T
        assert fused.shape[1] == 31 and torch.allclose(fused[:, 1:], full[:, 1:], atol=1e-4)
        cand = torch.tensor([[3, 7], [1, 30]])
        assert torch.allclose(mix.fuse({m: h[:, -1] for m, h in hidden.items()}, tables, cand), full.gather(1, cand))
        users, states, tabs = precompute_users(mix, {7: np.array([3, 4, 5]), 9: np.array([1, 2, 3, 4, 6])})
        top = precompute_top(mix, states, tabs, np.array([3, 5]), depth=4)
        assert top[users[9]][0][0] == int(full[1, 1:].argmax()) + 1
    save_model(mix, tmp_path / "m", {"note": "x"})
    back, meta = load_model(tmp_path / "m")
    assert isinstance(back, SnapshotEnsemble) and back.late_weight == 0.3 and meta["note"] == "x"
    assert torch.allclose(back.full_sort_predict(seq)[:, 1:], full[:, 1:], atol=1e-5)
    import shutil

    shutil.rmtree(tmp_path / "m" / "late")
    with pytest.raises(ValueError, match="late member"):
        load_model(tmp_path / "m")


def test_snapshot_late_trains_past_the_best_window_and_mixes_it_in_at_the_validation_weight(monkeypatch):
    from training.seqrec import trainer as trainer_module
    from training.seqrec.ensemble import SnapshotEnsemble

    x, y, valid = _toy_data()
    seen = {}

    def choose(best, late, data, grid=(0.0, 0.25)):  # record what is mixed; the weight is chosen as the library does
        seen["late"] = {k: v.clone() for k, v in late.state_dict().items()}
        return 0.25, {0.0: 0.1, 0.25: 0.2}

    monkeypatch.setattr(trainer_module, "choose_late_weight", choose)
    valid_scores = iter([0.5, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05])  # best after epoch 1, then worse every epoch

    class Scripted(SeqRecTrainer):
        def validate(self, epoch, row, bad):
            score = next(valid_scores)
            if score > self.best["ndcg@10"]:
                self.best, bad = {"epoch": epoch, "ndcg@10": score}, 0
                self.best_state = {k: v.clone() for k, v in self.eval_model.state_dict().items()}
            else:
                bad += 1
            return row | {"valid_ndcg@10": score}, bad

    kw = dict(epochs=7, batch_size=16, lr=1e-2, patience=1, show_progress=False)
    cfg = sft_config(**kw, snapshot_late=3)
    assert cfg.stop_after == 3
    t = Scripted(small_model(), cfg, x, y, valid)
    fit = t.fit()
    assert fit["epochs_run"] == 5 and fit["kept_epoch"] == 1  # three validations past the best, then stop
    assert fit["snapshot"]["late_epochs"] == [4] and fit["snapshot"]["late_weight"] == 0.25
    assert isinstance(t.ensemble, SnapshotEnsemble) and t.ensemble.best is t.model
    last_epoch = {k: v for k, v in t.ensemble.late.state_dict().items()}
    assert all(torch.equal(seen["late"][k], last_epoch[k]) for k in last_epoch)
    assert not torch.equal(t.model.state_dict()["item_id.weight"], last_epoch["item_id.weight"])
    # no late snapshot: early stopping at the patience, no ensemble
    valid_scores = iter([0.5, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05])
    t = Scripted(small_model(), sft_config(**kw, snapshot_late=None), x, y, valid)
    fit = t.fit()
    assert fit["epochs_run"] == 3 and fit["snapshot"] is None and t.ensemble is None
    with pytest.raises(ValueError, match="snapshot_late"):
        sft_config(snapshot_late=0)
    with pytest.raises(ValueError, match="stage 1"):
        dpo_config(snapshot_late=3)


def test_id_dropout_drops_whole_id_rows_keeps_the_attributes_and_turns_off():
    torch.manual_seed(0)
    attrs = torch.zeros(301, 2, dtype=torch.long)
    attrs[1:] = torch.randint(1, 6, (300, 2))
    cfg = SeqRecConfig(
        n_items=300, d=16, n_layers=1, n_heads=2, inner=32, attributes=True, n_attributes=5, id_dropout=0.25
    )
    m = MultimodalSASRec(cfg, attributes=attrs)
    with torch.no_grad():
        m.attr_emb.weight[1:] = torch.randn(5, 16)
    rows, means = m.item_id.weight, m.attribute_means()
    table = m.item_table("id")
    dropped = (table - means).abs().sum(1) == 0
    kept = torch.isclose(table - means, rows / 0.75, atol=1e-6).all(1)
    assert torch.equal(dropped[1:] | kept[1:], torch.ones(300, dtype=torch.bool))  # a row goes whole or stays
    assert 0.15 < dropped[1:].float().mean().item() < 0.35
    assert torch.allclose(table[dropped], means[dropped])  # a dropped item is scored by its attributes
    m.eval()
    assert torch.equal(m.item_table("id"), rows + means)
    m.train()
    m.disable_dropout()  # a preference stage without dropout drops no ID row either
    assert torch.equal(m.item_table("id"), rows + means)
    for name in ("id_dropout", "dropout", "attn_dropout"):  # p = 1 would scale the kept rows by 1 / 0
        for p in (1.0, -0.1):
            with pytest.raises(ValueError, match=f"{name} must be in"):
                SeqRecConfig(n_items=300, **{name: p})
