"""Large-catalogue losses, the chunked DPO pool, DDP under torchrun and its launch through Dagster Pipes."""

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
import torch

from training.seqrec.gathered import FoldedRows, GatheredFusedTable, GatheredTable
from training.seqrec.losses import (
    SampledSoftmax,
    full_cross_entropy,
    gbce,
    gbce_beta,
    make_objective,
    sampled_softmax_logq,
)
from training.seqrec.model import MultimodalSASRec, SeqRecConfig
from training.seqrec.samplers import stochastic_topk_negatives, topk_excluding
from training.seqrec.scores import PositionScores
from training.seqrec.trainer import SeqRecTrainer

from .helpers import dpo_config, sft_config

ROOT = Path(__file__).resolve().parents[1]


def _model(n_items=30, d=8, seed=0):
    torch.manual_seed(seed)
    return MultimodalSASRec(
        SeqRecConfig(n_items=n_items, d=d, max_len=6, n_layers=1, dropout=0.0, attn_dropout=0.0, id_dropout=0.0)
    )


def _batch():
    # left-padded windows with a repeated item (4) so that history masking has something to hide
    seq = torch.tensor([[0, 4, 5, 6, 4, 7], [8, 9, 10, 11, 12, 13]])
    tgt = torch.tensor([[0, 5, 6, 4, 7, 9], [9, 10, 11, 12, 13, 0]])
    return seq, tgt


def test_sampled_softmax_with_logq_on_hand_computed_numbers():
    pos, neg = torch.tensor([2.0]), torch.tensor([[1.0, 0.0]])
    lq_pos, lq_neg = torch.tensor([math.log(0.5)]), torch.tensor([[math.log(0.25), math.log(0.25)]])
    z = [2.0 - math.log(0.5), 1.0 - math.log(0.25), 0.0 - math.log(0.25)]
    expected = -(z[0] - math.log(sum(math.exp(v) for v in z)))
    assert sampled_softmax_logq(pos, neg, lq_pos, lq_neg).item() == pytest.approx(expected, rel=1e-6)
    # a masked negative (an accidental hit or a seen item) drops out of the partition
    masked = sampled_softmax_logq(pos, neg, lq_pos, lq_neg, torch.tensor([[False, True]]))
    assert masked.item() == pytest.approx(-(z[0] - math.log(math.exp(z[0]) + math.exp(z[1]))), rel=1e-6)
    # without correction (uniform Q) it is the plain softmax over [pos, negs]
    plain = sampled_softmax_logq(pos, neg, torch.zeros(1), torch.zeros(1, 2))
    assert plain.item() == pytest.approx(-(2.0 - math.log(math.exp(2) + math.exp(1) + 1)), rel=1e-6)


def test_gbce_and_its_beta_on_hand_computed_numbers():
    assert gbce_beta(10, 101, 0.75) == pytest.approx(0.1 * (0.75 * (1 - 10) + 10))  # alpha = 10 / 100
    assert gbce_beta(10, 101, 0.0) == pytest.approx(1.0)  # t = 0: plain BCE
    assert gbce_beta(10, 101, 1.0) == pytest.approx(0.1)  # t = 1: beta = alpha
    beta = 0.325

    def sig(x):
        return 1 / (1 + math.exp(-x))

    expected = -beta * math.log(sig(1.0)) - math.log(1 - sig(0.5)) - math.log(1 - sig(-1.0))
    got = gbce(torch.tensor([1.0]), torch.tensor([[0.5, -1.0]]), beta)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    masked = gbce(torch.tensor([1.0]), torch.tensor([[0.5, -1.0]]), beta, torch.tensor([[True, False]]))
    assert masked.item() == pytest.approx(-beta * math.log(sig(1.0)) - math.log(1 - sig(-1.0)), rel=1e-6)


@pytest.mark.parametrize("mask_seen", [False, True])
def test_sampled_softmax_with_every_item_as_negative_is_full_cross_entropy(mask_seen):
    seq, tgt = _batch()
    m = _model()
    scored = m.position_scores(seq, tgt, mask_seen)
    full = full_cross_entropy(scored)
    every = SampledSoftmax(negatives="uniform").loss_on(scored, torch.arange(1, m.cfg.n_items + 1))
    assert every.item() == pytest.approx(full.item(), rel=1e-6)
    g_full = torch.autograd.grad(full, m.item_id.weight)[0]
    scored = m.position_scores(seq, tgt, mask_seen)
    every = SampledSoftmax(negatives="uniform").loss_on(scored, torch.arange(1, m.cfg.n_items + 1))
    assert torch.allclose(torch.autograd.grad(every, m.item_id.weight)[0], g_full, atol=1e-6)


def test_in_batch_negatives_are_corrected_by_their_training_frequency():
    seq, tgt = _batch()
    objective = make_objective("sampled_softmax", 0, "in_batch", 0.75, tgt)
    counts = torch.bincount(tgt[tgt > 0], minlength=14).float()
    assert torch.allclose(objective.log_q[counts > 0], (counts[counts > 0] / counts.sum()).log())
    scored = _model().position_scores(seq, tgt)
    # by hand: the batch's targets are the negatives, each position's own target masked, all scores corrected
    s, y = scored.of(scored.targets), scored.targets
    lq = objective.log_q[y]
    z = torch.cat([(s.gather(1, torch.arange(len(y))[:, None]).squeeze(1) - lq)[:, None], s - lq[None, :]], 1)
    z[:, 1:] = z[:, 1:].masked_fill(y[None, :] == y[:, None], float("-inf"))
    assert objective(scored).item() == pytest.approx((-z.log_softmax(1)[:, 0]).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="'ce', 'sampled_softmax', 'gbce'"):
        make_objective("bpr", 8, "uniform", 0.75, None)
    with pytest.raises(ValueError, match="uniform"):
        make_objective("gbce", 8, "in_batch", 0.75, None)


def test_chunked_topk_pool_equals_the_materialised_one():
    seq, tgt = _batch()
    m = _model(n_items=300, d=8, seed=3)
    for mask_seen in (False, True):
        scored = m.position_scores(seq, tgt, mask_seen).detach()
        dense = scored.materialise()
        for k in (1, 7, 40):
            chunked = scored.topk_excluding(k, chunk_elements=len(scored.query) * 16)  # 19 chunks of 16 items
            assert torch.equal(chunked, topk_excluding(dense, scored.targets, k))
        draw = stochastic_topk_negatives(scored, scored.targets, k=5, generator=torch.Generator().manual_seed(0))
        assert (draw != scored.targets).all() and (draw > 0).all()


@pytest.mark.parametrize("loss", ["sampled_softmax", "gbce"])
def test_large_catalogue_steps_never_build_the_full_score_matrix(monkeypatch, loss):
    """SFT and DPO steps of a 200k-item model with a sampled loss: no N x n_items matrix is materialised, and the
    ID table's dropout (on by default) is applied to the gathered rows, never to the whole table."""
    monkeypatch.setattr(PositionScores, "materialise", lambda self: pytest.fail("full score matrix built"))
    whole = GatheredTable.dense

    def dense(self):
        assert all(f is None for _, f in getattr(self, "terms", [])), "the dropped ID table was built whole"
        return whole(self)

    monkeypatch.setattr(GatheredTable, "dense", dense)
    torch.manual_seed(0)
    n = 200_000
    x = torch.randint(1, n + 1, (64, 8))
    y = torch.roll(x, -1, 1)
    y[:, -1] = 0
    from training.seqrec.data import EvalSet

    valid = EvalSet.build([r.numpy() for r in x[:16]], x[:16, -1].numpy(), torch.arange(16).numpy(), 8)
    model = MultimodalSASRec(SeqRecConfig(n_items=n, d=8, max_len=8, n_layers=1, id_init="random"))
    common = {"batch_size": 32, "loss": loss, "n_negatives": 64, "show_progress": False, "epochs": 1}
    sft = SeqRecTrainer(model, sft_config(**common), x, y, valid).fit()
    assert math.isfinite(sft["history"][0]["loss"])
    dpo = SeqRecTrainer(model, dpo_config(**common, topk=5, precompute_ref=False), x, y, valid).fit()
    assert math.isfinite(dpo["history"][0]["dpo"])


@pytest.mark.parametrize("temperature", [None, 0.1])
@pytest.mark.parametrize("loss", ["sampled_softmax", "gbce"])
def test_id_dropout_at_the_gathered_rows_equals_the_dropped_table(loss, temperature, monkeypatch):
    """A sampled loss on a table built at the rows it reads (ID dropout, attributes and text included): the loss and
    every gradient of the whole dropped table, under the same draw; each table's gathers (inputs, targets,
    negatives) reach its gradient as rows, written dense once; the text table is projected at those rows only."""
    folded, fold = [], FoldedRows.backward
    monkeypatch.setattr(FoldedRows, "backward", staticmethod(lambda ctx, g: folded.append(g.is_sparse) or fold(ctx, g)))
    whole, table = [], MultimodalSASRec.item_table
    monkeypatch.setattr(MultimodalSASRec, "item_table", lambda self, m: whole.append(m) or table(self, m))
    torch.manual_seed(0)
    n = 300
    attrs = torch.zeros(n + 1, 2, dtype=torch.long)
    attrs[1:] = torch.randint(1, 6, (n, 2))
    cfg = SeqRecConfig(
        n_items=n, d=16, max_len=8, n_layers=1, n_heads=2, inner=32, modalities=["id", "text"], text_dim=12,
        attributes=True, n_attributes=5, id_dropout=0.3, temperature=temperature,
    )  # fmt: skip
    model = MultimodalSASRec(cfg, text=torch.randn(n + 1, 12), attributes=attrs).train()
    with torch.no_grad():
        model.attr_emb.weight[1:] = torch.randn(5, 16)
    x = torch.randint(1, n + 1, (16, 8))
    y = torch.roll(x, -1, 1)
    y[:, -1] = 0
    objective = make_objective(loss, 32, "uniform", 0.75, None)
    runs = []
    for gathered in (False, True):
        model.zero_grad()
        folded.clear()
        whole.clear()
        torch.manual_seed(1)  # the same dropout draws, in the same order
        scored = model.position_scores(x, y, mask_seen=True, gathered=gathered)
        assert isinstance(scored.table, GatheredFusedTable) == gathered
        value = objective(scored, torch.Generator().manual_seed(2))
        value.backward()
        runs.append((value.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
        assert folded == ([True, True] if gathered else [False, False])  # ID and attribute terms: rows, or whole
        assert whole == ([] if gathered else ["id", "text"])  # gathered: the text projection runs on the rows read
    (full, full_grads), (rows, row_grads) = runs
    assert torch.allclose(full, rows, atol=1e-6) and full_grads.keys() == row_grads.keys()
    for k in full_grads:
        assert torch.allclose(full_grads[k], row_grads[k], atol=1e-6), k
    assert (full_grads["item_id.weight"][1:].abs().sum(1) == 0).any()  # some rows were dropped or not read
    assert isinstance(model.calculate_loss(x, y, True, objective, return_scores=True)[1].table, GatheredFusedTable)
    assert isinstance(model.calculate_loss(x, y, True, return_scores=True)[1].table, torch.Tensor)  # full CE: whole


def test_sampled_softmax_and_gbce_learn_the_toy_task():
    from .test_seqrec_units import _toy_data, small_model

    x, y, valid = _toy_data()
    # on 30 items, BCE with many negatives pushes every item down and stalls (full BCE as well): gbce with one
    for loss, negatives, k in (
        ("sampled_softmax", "uniform", 16),
        ("sampled_softmax", "in_batch", 0),
        ("gbce", "uniform", 1),
    ):
        cfg = sft_config(
            epochs=12, batch_size=32, lr=5e-3, loss=loss, negatives=negatives, n_negatives=k, show_progress=False
        )
        fit = SeqRecTrainer(small_model(), cfg, x, y, valid).fit()
        assert fit["history"][-1]["loss"] < fit["history"][0]["loss"], (loss, negatives)
        assert fit["best"]["ndcg@10"] > 0.25, (loss, negatives)  # the untrained model: 0.17


# --- DDP under torchrun, and its launch through Dagster Pipes ---------------------------------------------------

TINY_SPEC = {"d": 16, "n_layers": 1, "dropout": 0.0, "attn_dropout": 0.0, "id_dropout": 0.0, "modalities": ["id"]}
TRAIN = {"epochs": 4, "batch_size": 64, "lr": 5e-3, "swa_last": None, "eval_every": 1, "keep": "best", "patience": 9}


@pytest.fixture(scope="module")
def synthetic_home(tmp_path_factory):
    from assets.ingest.pipeline import DatasetSpec, ingest
    from recalign.settings import Settings

    home = Settings.from_env(tmp_path_factory.mktemp("ddp"))
    ingest(home, DatasetSpec("synthetic", None, name="syn"))
    return home


def _spec(home, tmp_path, name, **train):
    from assets.seqrec.launch import launch_spec

    spec = launch_spec(home, "syn", "sft", TINY_SPEC, TRAIN | train)
    spec["checkpoint_dir"] = str(tmp_path / f"ckpt-{name}")
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def _torchrun(nproc: int, spec: Path, **kw) -> subprocess.Popen:
    from assets.seqrec.launch import torchrun_command

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        torchrun_command(nproc, spec),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _summary(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return json.loads([line for line in out.splitlines() if line.startswith('{"name"')][-1])


def _curve(summary: dict) -> list[tuple]:
    return [(r["epoch"], round(r["loss"], 4), round(r["valid_ndcg@10"], 4)) for r in summary["history"]]


LONG = {"epochs": 12, "patience": 12}  # long enough to kill a run part-way


@pytest.fixture(scope="module")
def ddp_runs(synthetic_home, tmp_path_factory):
    """One run in 1 process and one in 2 (torchrun, gloo), same spec: the 2-process one is also the uninterrupted
    reference of the kill-and-resume test."""
    tmp = tmp_path_factory.mktemp("ddp_runs")
    one = _summary(_torchrun(1, _spec(synthetic_home, tmp, "one", **LONG)))
    two = _summary(_torchrun(2, _spec(synthetic_home, tmp, "two", **LONG)))
    return one, two


def test_two_ddp_processes_match_one_and_only_rank_0_writes(synthetic_home, ddp_runs):
    one, two = ddp_runs
    # the same global batches, gradients averaged over ranks weighted by their positions: without dropout the
    # runs differ only by float summation order. Tolerance: 0.002 on every validation metric, 0.001 on the loss.
    for a, b in zip(one["history"], two["history"], strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-3
        assert all(abs(a[k] - b[k]) < 2e-3 for k in a if k.startswith("valid_"))
    assert all(abs(one["test"][k] - two["test"][k]) < 2e-3 for k in ("ndcg@10", "hr@10", "mrr@10"))
    reg = synthetic_home.registry("syn")
    assert one["name"] == two["name"] == "seqrec_sft_attr"  # the recipe's attributes: synthetic items have categories
    assert len(reg.versions(one["name"])) == 2  # one model per run: rank 1 registered nothing
    runs = synthetic_home.metrics().read("SELECT run_id FROM runs")
    assert len(runs) == 2


def test_a_killed_ddp_run_resumes_to_the_same_history(synthetic_home, ddp_runs, tmp_path):
    from training.seqrec.checkpoint import training_state_meta

    _, full = ddp_runs
    spec = _spec(synthetic_home, tmp_path, "killed", **LONG)
    state = Path(json.loads(spec.read_text())["checkpoint_dir"]) / "last-sft"
    proc = _torchrun(2, spec)
    deadline = time.time() + 240
    while time.time() < deadline and (training_state_meta(state) or {"epoch": -1})["epoch"] < 1:
        time.sleep(0.02)
    # torchrun and both ranks at once, mid-run (torchrun starts each rank in its own session: kill them by pid)
    for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        p.send_signal(signal.SIGKILL)
    proc.communicate()
    done = training_state_meta(state)["epoch"]
    assert 1 <= done < LONG["epochs"] - 2, "the run must be killed part-way"
    resumed = _summary(_torchrun(2, spec))
    assert _curve(resumed) == _curve(full)
    assert not Path(json.loads(spec.read_text())["checkpoint_dir"]).exists()  # registered: checkpoints removed


def test_seqrec_sft_with_nproc_2_materialises_through_dagster_pipes(synthetic_home):
    from assets.resources import DatasetResource, RecalignHome
    from assets.seqrec.defs import seqrec_sft

    config = {**TINY_SPEC, **TRAIN, "nproc": 2, "epochs": 2, "modalities": ["id"]}
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("datasets", ["syn"])
    result = dg.materialize(
        [seqrec_sft],
        instance=instance,
        partition_key="syn",
        resources={
            "recalign": RecalignHome(home=str(synthetic_home.home)),
            "dataset": DatasetResource(name="syn"),
            "pipes_subprocess_client": dg.PipesSubprocessClient(cwd=str(ROOT)),
        },
        run_config={"ops": {"seqrec_sft": {"config": config}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("seqrec_sft")[0].metadata
    assert meta["nproc"].value == 2
    epochs = meta["epochs"].value  # the per-epoch table the training processes sent
    assert epochs.count("\n| ") == 2 and "valid_ndcg@10" in epochs.splitlines()[0]
    assert meta["valid_ndcg@10"].value > 0.1 and meta["epochs_run"].value == 2
    lines = [r.user_message for r in instance.all_logs(result.run_id)]
    assert any(line.startswith('{"epoch": 1, "stage": "sft"') for line in lines)  # rank 0's epochs, as Dagster logs
    model = synthetic_home.registry("syn").get(meta["name"].value, meta["version"].value)
    assert model.path.exists()


# --- preference objectives of stage 2 ---------------------------------------------------------------------------


def test_sdpo_and_simpo_on_hand_computed_numbers():
    from training.seqrec.losses import dpo_logit_loss, sdpo_logit_loss, simpo_logit_loss

    pw, rw = torch.tensor([2.0]), torch.tensor([1.0])
    pl, rl = torch.tensor([[1.5, 0.0]]), torch.tensor([[1.0, 0.5]])
    beta = 0.5
    # rewards beta * [(s_l - s_ref_l) - (s_w - s_ref_w)]: 0.5 * (0.5 - 1) = -0.25 and 0.5 * (-0.5 - 1) = -0.75
    expected = math.log1p(math.exp(math.log(math.exp(-0.25) + math.exp(-0.75))))
    assert sdpo_logit_loss(pw, pl, rw, rl, beta).item() == pytest.approx(expected, rel=1e-6)
    # one rejected item: S-DPO is DPO
    one = sdpo_logit_loss(pw, pl[:, :1], rw, rl[:, :1], beta)
    assert one.item() == pytest.approx(dpo_logit_loss(pw, pl[:, 0], rw, rl[:, 0], beta).item(), rel=1e-6)
    # SimPO: -log sigma(beta (s_w - s_l) - gamma) = -log sigma(0.5 * 0.5 - 0.3)
    assert simpo_logit_loss(pw, pl[:, 0], beta, 0.3).item() == pytest.approx(
        -math.log(1 / (1 + math.exp(-(0.25 - 0.3)))), rel=1e-6
    )


@pytest.mark.parametrize("preference", ["dpo", "sdpo", "simpo"])
def test_each_preference_objective_trains_a_stage_2(preference):
    from .test_seqrec_units import _toy_data, small_model

    x, y, valid = _toy_data()
    ref = small_model()
    SeqRecTrainer(ref, sft_config(epochs=3, batch_size=32, lr=5e-3, show_progress=False), x, y, valid).fit()
    policy = MultimodalSASRec(ref.cfg)
    policy.load_state_dict(ref.state_dict())
    cfg = dpo_config(epochs=2, batch_size=32, topk=5, preference=preference, n_rejected=3, show_progress=False)
    trainer = SeqRecTrainer(policy, cfg, x, y, valid, reference=ref)
    fit = trainer.fit()
    assert all(math.isfinite(r["dpo"]) for r in fit["history"])
    if preference != "simpo":  # at the reference, DPO is log 2; S-DPO with M items log(1 + M)
        assert fit["history"][0]["dpo"] < (math.log(4) if preference == "sdpo" else math.log(2)) + 0.05
    from training.seqrec.recipe import run_name

    expected = {"dpo": "seqrec_dpo_stochastic_topk", "sdpo": "seqrec_dpo_stochastic_topk_sdpo"}
    assert run_name("dpo", {}, cfg) == expected.get(preference, "seqrec_dpo_stochastic_topk_simpo")
    with pytest.raises(ValueError, match="'dpo', 'sdpo', 'simpo'"):
        dpo_config(preference="ipo")


def test_diagnostics_measure_margins_false_negatives_gradients_and_the_ranking_shift():
    from training.seqrec.diagnostics import later_items, preference_diagnostics, ranking_shift

    tgt = torch.tensor([[0, 5, 6, 4], [8, 9, 10, 0]])
    expected = [[0, 0, 6, 4], [0, 0, 0, 4], [0, 0, 0, 0], [0, 9, 10, 0], [0, 0, 10, 0], [0, 0, 0, 0]]
    assert later_items(tgt).tolist() == expected
    from .test_seqrec_units import _toy_data, small_model

    x, y, valid = _toy_data()
    ref = small_model()
    SeqRecTrainer(ref, sft_config(epochs=2, batch_size=32, lr=5e-3, show_progress=False), x, y, valid).fit()
    policy = MultimodalSASRec(ref.cfg)
    policy.load_state_dict(ref.state_dict())
    trainer = SeqRecTrainer(policy, dpo_config(batch_size=32, topk=5, show_progress=False), x, y, valid, reference=ref)
    d = preference_diagnostics(trainer, n_batches=2)
    assert d["margin_mean"] == pytest.approx(0.0, abs=1e-5)  # no dropout: the policy is the reference
    assert 0.0 <= d["false_negative_rate"] <= 1.0 and d["grad_norm_ce"] > 0 and d["grad_norm_pref"] > 0
    # at the reference, the DPO gradient is -beta/2 * grad(s_w - s_l): the same direction as CE's pull on y_w
    assert d["grad_cosine"] > 0
    same = ranking_shift(ref, policy, valid)
    assert same["unchanged"] == 1.0 and same["paired_ndcg@10"]["mean_diff"] == 0.0


def test_exclude_future_keeps_the_users_later_items_out_of_the_negative_pool():
    from dataclasses import replace

    from training.seqrec.scores import later_items

    seq, tgt = _batch()
    m = _model(n_items=20, d=8, seed=1)
    scored = replace(m.position_scores(seq, tgt, mask_seen=True), mask_future=True).detach()
    later = later_items(tgt)
    for pool in (topk_excluding(scored.materialise(), scored.targets, 15), scored.topk_excluding(15, 16 * 11)):
        finite = torch.isfinite(scored.materialise().gather(1, pool))
        clash = (pool[:, :, None] == later[:, None, :]) & (later[:, None, :] != scored.targets[:, None, None])
        assert not (clash & finite[:, :, None]).any()  # a later item is never a (finite) candidate
    # and a plain pool does contain some: the option changes something
    plain = m.position_scores(seq, tgt, mask_seen=True).detach().topk_excluding(15)
    assert ((plain[:, :, None] == later[:, None, :]) & (later[:, None, :] > 0)).any()


def test_mixed_negatives_correct_every_score_by_its_expected_count():
    from training.seqrec.losses import sequence_negatives

    seq, tgt = _batch()
    objective = make_objective("sampled_softmax", 3, "mixed", 0.75, tgt)
    scored = _model(n_items=14).position_scores(seq, tgt, mask_seen=True)
    got = objective(scored, torch.Generator().manual_seed(1))
    neg = sequence_negatives(scored, 3, torch.Generator().manual_seed(1))
    y, (b, _) = scored.targets, scored.positions()
    assert int(neg.max()) > len(objective.log_q) - 1  # a draw above every training target's id is scored too
    p = torch.nn.functional.pad(objective.log_q.exp(), (0, 15 - len(objective.log_q)))
    lq = lambda items: (len(y) * p[items] + 3 / 14).log()  # noqa: E731
    z = torch.cat(
        [
            (scored.of(y[:, None])[:, 0] - lq(y))[:, None],
            (scored.of(y) - lq(y)[None]).masked_fill(scored.masked(y), float("-inf")),
            (scored.of(neg[b]) - lq(neg[b])).masked_fill(scored.masked(neg[b]), float("-inf")),
        ],
        1,
    )
    assert got.item() == pytest.approx((-z.log_softmax(1)[:, 0]).mean().item(), rel=1e-5)


def test_sequence_item_masks_equal_the_per_position_masks():
    from dataclasses import replace

    seq, tgt = _batch()
    scored = _model(n_items=14).position_scores(seq, tgt, mask_seen=True)
    neg = torch.tensor([[4, 5, 9, 0, 13, 6], [9, 10, 4, 12, 1, 8]])
    b = scored.positions()[0]
    for s in (scored, replace(scored, mask_future=True), replace(scored, mask_seen=False)):
        assert torch.equal(s.masked_sequence_items(neg), s.masked(neg[b]))


def test_disable_dropout_makes_the_policy_margins_start_at_the_reference():
    from training.seqrec.diagnostics import preference_diagnostics

    from .test_seqrec_units import _toy_data

    x, y, valid = _toy_data()
    torch.manual_seed(0)
    cfg = SeqRecConfig(n_items=30, d=16, n_layers=1, inner=32, dropout=0.3, attn_dropout=0.3)
    ref = MultimodalSASRec(cfg)
    margins = {}
    for off in (True, False):
        policy = MultimodalSASRec(cfg)
        policy.load_state_dict(ref.state_dict())
        stage = dpo_config(batch_size=32, topk=5, disable_dropout=off, show_progress=False)
        trainer = SeqRecTrainer(policy, stage, x, y, valid, reference=ref)
        margins[off] = preference_diagnostics(trainer, n_batches=2)["margin_mean"]
    assert margins[True] == pytest.approx(0.0, abs=1e-5)  # DPO starts at log 2, as in the paper's derivation
    assert abs(margins[False]) > 1e-3  # with dropout the policy's margins are noise around the reference's


def test_shard_batches_split_every_global_batch_and_pad_the_small_ones():
    from training.seqrec.distributed import shard_batches

    batches = [torch.tensor([5]), torch.tensor([1, 2, 3])]
    ranks = [shard_batches(batches, r, 2) for r in (0, 1)]
    assert [b.tolist() for b in ranks[0]] == [[5], [1, 3]] and [b.tolist() for b in ranks[1]] == [[5], [2]]
    assert shard_batches(batches, 0, 1) is batches
