"""LLM track, second formulation and cheaper training: the pointwise Yes/No prompt and its P(Yes) score, the
shared-prefix loss against the plain one, grouped DPO / HaNoRec steps on both formulations, neighbourhood hardness."""

import numpy as np
import pytest
import torch

from training.llm import pointwise, prompt
from training.llm.prefix import completion_logps, encode_group
from training.llm.prompt import Example
from training.llm.rewards import yes_no_reward

EX = Example(
    user_id=1,
    summary="likes slow-burn heist films",
    history=["Heat (1995)", "Fargo (1996)"],
    candidates=["Ronin (1998)", "Babe (1995)", "Se7en (1995)"],
    target=0,
    candidate_ids=[5, 6, 7],
)


@pytest.fixture(scope="module")
def tiny(models_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.llm.tiny import build_tiny_causal_lm

    path = build_tiny_causal_lm(models_dir / "tiny-llama", models_dir)
    return str(path), AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


def test_pointwise_prompt_splits_into_the_user_prefix_and_each_candidate(tiny):
    _, tok, _ = tiny
    group = pointwise.sft_group(tok, EX)
    assert group["completions"] == [f"Yes{tok.eos_token}", f"No{tok.eos_token}", f"No{tok.eos_token}"]
    for i, ctx in enumerate(group["contexts"]):
        whole = pointwise.prompt_text(tok, EX, i)
        assert group["prefix"] + ctx == whole  # prefix + continuation is exactly the chat prompt of candidate i
        assert f"Candidate: {EX.candidates[i]}" in ctx and EX.candidates[i] not in group["prefix"]
    assert "likes slow-burn heist films" in group["prefix"] and "Fargo (1996)" in group["prefix"]
    assert whole.endswith("<|im_start|>assistant\n")
    pair = pointwise.pair_group(tok, EX, rejected=2)
    assert pair["pairs"] == [[0, 1]] and "Se7en" in pair["contexts"][1] and pair["completions"][1].startswith("Yes")


def test_pointwise_score_is_the_yes_no_log_odds_of_the_whole_prompt(tiny):
    """score_candidates (prefix once, candidates against its cache) = log p(Yes) - log p(No) after each full prompt."""
    _, tok, model = tiny
    fast = pointwise.score_candidates(model, tok, EX)
    yes, no = pointwise.yes_no_ids(tok)
    prefix, tail = pointwise.prompt_parts(tok, EX)
    for i, s in enumerate(fast):
        ids = tok(prefix, add_special_tokens=False)["input_ids"]
        ids += tok(pointwise.candidate_text(EX, i) + tail, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], -1)
        assert s == pytest.approx(float(logp[yes] - logp[no]), abs=1e-4)
    assert len(set(np.round(fast, 6))) == 3  # the candidate changes the answer


@pytest.mark.parametrize("formulation", [pointwise, prompt])
def test_shared_prefix_loss_and_gradient_equal_the_plain_ones(tiny, formulation):
    _, tok, model = tiny
    group = formulation.pair_group(tok, EX, 1) if formulation is prompt else formulation.sft_group(tok, EX)
    g = encode_group(tok, group["prefix"], group["contexts"], group["completions"])
    assert g.shared_tokens < g.plain_tokens
    grads, logps = [], []
    for shared in (True, False):
        model.zero_grad()
        lp, n = completion_logps(model, g, shared, tok.pad_token_id)
        assert n.tolist() == [len(tok(c, add_special_tokens=False)["input_ids"]) for c in group["completions"]]
        (-lp.sum() / n.sum()).backward()
        logps.append(lp.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(logps[0], logps[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    assert grads[0].abs().max() > 0


def _sft_adapter(path: str, out):
    from peft import get_peft_model

    from training.llm.trainers import LoRAConfig, load_base

    torch.manual_seed(0)
    sft = get_peft_model(load_base(path), LoRAConfig(r=4, dropout=0.0, target_modules=["q_proj", "v_proj"]).peft())
    for name, p in sft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    sft.save_pretrained(out)
    return out


@pytest.mark.parametrize("formulation", [pointwise, prompt])
def test_grouped_dpo_and_hanorec_steps_on_each_formulation(tiny, tmp_path, formulation):
    """One SGD step from the SFT adapter: policy = reference, so the DPO loss is log 2 and the update is
    -beta/2 * grad delta; HaNoRec at hardness 1 (gamma 0.5, no responsiveness, no noise) halves beta and the
    update; the shared-prefix step equals the plain one, and two accumulated micro-batches the one batch of two."""
    from training.llm.trainers import PreferenceStageConfig, load_adapter, run_preference

    path, tok, _ = tiny
    sft = _sft_adapter(path, tmp_path / "sft")
    ex2 = Example(2, None, ["Babe (1995)"], ["Toy Story (1995)", "Heat (1995)"], 1, [8, 5])
    base = [formulation.pair_group(tok, EX, 2), formulation.pair_group(tok, ex2, 0)]
    updates, losses = {}, {}
    for method, hardness, shared, accum in [("dpo", 0.0, True, 1), ("hanorec", 0.0, True, 1),
                                            ("hanorec", 1.0, True, 1), ("hanorec", 1.0, False, 1),
                                            ("dpo", 0.0, True, 2)]:  # fmt: skip
        rows = [{**r, "hardness": [hardness]} for r in base]
        cfg = PreferenceStageConfig(method=method, batch_size=2 // accum, grad_accum=accum, max_steps=1, lr=1.0,
                                    beta=0.1, shared_prefix=shared, responsiveness_alpha=0.0, noise_sigma=0.0,
                                    logging_steps=1, optim="sgd", max_grad_norm=0.0)  # fmt: skip
        out_dir = tmp_path / f"{method}{hardness}{shared}{accum}"
        before = load_adapter(path, sft).state_dict()
        stats = run_preference(path, tok, sft, rows, out_dir, cfg)
        after = load_adapter(path, out_dir).state_dict()
        key = (method, hardness, shared) if accum == 1 else ("dpo", "accumulated")
        updates[key] = torch.cat([(after[k] - before[k]).flatten() for k in before if "lora_" in k])
        losses[key] = stats["history"][0]["loss"]
        assert (out_dir / "adapter_model.safetensors").exists() and not list(out_dir.glob("*.bin"))
    assert all(v == pytest.approx(np.log(2), abs=1e-4) for v in losses.values())
    assert updates[("dpo", 0.0, True)].norm() > 0
    torch.testing.assert_close(updates[("hanorec", 0.0, True)], updates[("dpo", 0.0, True)], rtol=1e-4, atol=1e-7)
    # 2 steps of 1 accumulated = 1 step of 2 (each micro-batch's mean loss divided by the accumulation steps)
    torch.testing.assert_close(updates[("dpo", "accumulated")], updates[("dpo", 0.0, True)], rtol=1e-4, atol=1e-7)
    half = updates[("dpo", 0.0, True)] / 2
    torch.testing.assert_close(updates[("hanorec", 1.0, True)], half, rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(updates[("hanorec", 1.0, False)], half, rtol=1e-3, atol=1e-7)


def test_yes_no_reward():
    assert yes_no_reward(["Yes", " no.", "Yes, surely", "Maybe", ""], ["Yes", "No", "No", "Yes", "No"]) == [
        1.0,
        1.0,
        0.0,
        0.0,
        0.0,
    ]


def test_top_neighbours_and_hardness_on_hand_made_vectors():
    from scipy import sparse

    from assets.llmrec.pipeline import hardness_summary, top_neighbours
    from training.llm.hanorec import neighbourhood_hardness

    v = np.array([[0, 0], [1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1], [0.1, 0.9]], dtype=np.float32)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
    top = top_neighbours(v, [1, 2, 4], k=2)
    assert top == {1: {2, 3}, 2: {1, 3}, 4: {5, 3}}
    assert neighbourhood_hardness([top[1], top[1]], [top[2], top[4]], 2).tolist() == pytest.approx([0.5, 0.5])
    assert top_neighbours(sparse.csc_matrix(v.T), [1, 2, 4], k=2) == top  # item columns of a sparse matrix
    # items never seen together (similarity 0) are no neighbours: ties at 0 would make unrelated items overlap
    assert top_neighbours(sparse.csc_matrix(np.eye(5, dtype=np.float32)), [1, 2], k=2) == {1: set(), 2: set()}
    assert hardness_summary([0.0, 0.5, 1.0]) == {
        "mean_hardness": 0.5,
        "std_hardness": 0.4082,
        "nonzero_hardness": 0.6667,
    }


def test_item_vectors_cover_the_whole_catalogue_when_some_items_have_no_text(tmp_path, monkeypatch):
    """Item ids beyond the embedded texts (a partial item_text table) get a zero row, hence no neighbours."""
    import assets.embeddings.pipeline as emb
    from assets.ingest.pipeline import DatasetSpec, build_sequences, build_warehouse
    from assets.llmrec.pipeline import item_vectors, top_neighbours
    from recalign.settings import Settings

    home = Settings.from_env(tmp_path / "home")
    spec = DatasetSpec(name="synthetic", options={"n_items": 60, "n_users": 80})
    build_warehouse(home, spec)
    build_sequences(home, spec)
    monkeypatch.setenv("RECALIGN_SMOKE", "1")
    monkeypatch.setattr(emb, "SMOKE_TEXTS", 20)
    emb.embed_text_table(home, "synthetic", "item_text")
    n_items = int(home.warehouse("synthetic").read("SELECT max(item_id) AS n FROM items")["n"].iloc[0])
    text, cooc = item_vectors(home, "synthetic", "text"), item_vectors(home, "synthetic", "cooccurrence")
    assert text.shape[0] == cooc.shape[1] == n_items + 1 > 21
    assert (np.abs(text[21:]).sum(1) == 0).all() and (np.abs(text[1:21]).sum(1) > 0).all()
    assert top_neighbours(text, [n_items], k=5) == {n_items: set()}
