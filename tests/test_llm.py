"""LLM track: HaRS weights, NoDO noise, GRPO rewards, candidate scoring, DeepSpeed configs, and the stages end to end
on a tiny random-weight model through Dagster."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.llm.hanorec import (
    HardnessAwareBeta,
    hardness_beta,
    lora_noise,
    neighbourhood_hardness,
    responsiveness,
)
from training.llm.prompt import Example
from training.llm.rewards import accuracy_reward, format_reward, similarity_reward_fn
from training.llm.scoring import candidate_ranks, metrics_from_scores, score_titles

REPO = Path(__file__).resolve().parents[1]


def test_hars_harder_pairs_get_smaller_beta():
    assert neighbourhood_hardness([{1, 2, 3}, {1, 2}], [{2, 3, 4}, {5, 6}], k=3).tolist() == pytest.approx([2 / 3, 0])
    equal_gaps = torch.tensor([0.7, 0.7])
    beta = hardness_beta(0.1, torch.tensor([0.0, 1.0]), equal_gaps, gamma=0.5)
    assert beta.tolist() == pytest.approx([0.1, 0.05])  # eta = 1 for equal gaps; lambda=1 halves beta
    # responsiveness: standardised gaps -1, +1 -> eta 0.5, 1.5 (alpha 0.5)
    assert responsiveness(torch.tensor([1.0, 3.0]), alpha=0.5).tolist() == pytest.approx([0.5, 1.5])
    assert hardness_beta(0.1, torch.zeros(2), torch.tensor([1.0, 3.0])).tolist() == pytest.approx([0.05, 0.15])


def test_hardness_aware_beta_stands_in_for_trls_scalar():
    b = HardnessAwareBeta(beta0=0.1, gamma=0.5, alpha=0.5)
    b.new_batch(torch.tensor([0.0, 1.0]))
    delta = torch.tensor([2.0, 2.0], requires_grad=True)
    loss_term = b * delta  # trl: self.beta * delta_score
    assert loss_term.tolist() == pytest.approx([0.2, 0.1])
    assert (b * torch.tensor([1.0, 1.0])).tolist() == pytest.approx([0.1, 0.05])  # reused for logged rewards
    loss_term.sum().backward()
    assert delta.grad.tolist() == pytest.approx([0.1, 0.05])  # beta itself carries no gradient
    with pytest.raises(TypeError, match="per pair"):  # never silently one number (plain DPO)
        float(b)


def test_hanorec_step_puts_the_per_pair_betas_into_trls_loss(tmp_path, models_dir):
    """One HaNoRec step on a tiny model through trl's DPOTrainer: the per-pair beta_i reach the loss. At the first
    step policy = reference, so the gradient of -log sigma(beta_i * delta_i) is -beta_i / 2 * grad delta_i: with SGD
    the update of pairs whose beta_i is halved (hardness 1, gamma 0.5) is exactly half the update at hardness 0."""
    from transformers import AutoTokenizer

    from training.llm.hanorec import HaNoRecConfig, HaNoRecTrainer
    from training.llm.tiny import build_tiny_causal_lm
    from training.llm.trainers import LoRAConfig, StageConfig, _dataset, load_adapter, load_base

    tiny = str(build_tiny_causal_lm(models_dir / "tiny-llama", models_dir))
    tok = AutoTokenizer.from_pretrained(tiny)
    from peft import get_peft_model

    torch.manual_seed(0)
    sft = get_peft_model(load_base(tiny), LoRAConfig(r=4, target_modules=["q_proj", "v_proj"]).peft())
    for name, p in sft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    sft.save_pretrained(tmp_path / "sft")
    prompts = ["Which film next? A or B", "Pick one: tea or coffee"]
    updates, betas = [], []
    for hardness in (0.0, 1.0):
        rows = [{"prompt": p, "chosen": " A", "rejected": " B", "hardness": hardness} for p in prompts]
        kw = StageConfig(batch_size=2, max_steps=1, lr=1.0, seed=0).trainer_kwargs(tmp_path / f"out{hardness}")
        args = HaNoRecConfig(
            **{**kw, "optim": "sgd", "max_grad_norm": 0.0},
            beta=0.1,
            max_length=64,
            precompute_ref_log_probs=False,
            hardness_gamma=0.5,
            responsiveness_alpha=0.0,
            noise_sigma=0.0,
        )
        policy = load_adapter(tiny, tmp_path / "sft", trainable=True)
        before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
        trainer = HaNoRecTrainer(model=policy, args=args, train_dataset=_dataset(rows), processing_class=tok)
        trainer.train()
        betas.append(trainer.beta.current.tolist())
        updates.append(
            torch.cat([(p.detach() - before[n]).flatten() for n, p in policy.named_parameters() if n in before])
        )
    assert betas == [pytest.approx([0.1, 0.1]), pytest.approx([0.05, 0.05])]
    assert updates[0].norm() > 0
    torch.testing.assert_close(updates[1], updates[0] / 2, rtol=1e-3, atol=1e-7)


def _tiny_peft():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return model


def test_nodo_noise_in_training_forward_only_and_never_saved(tmp_path):
    model = _tiny_peft()
    x = torch.randint(0, 64, (2, 6))
    model.eval()
    with torch.no_grad():
        clean = model(input_ids=x).logits
    before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    handles = lora_noise(model, sigma=0.1)
    assert len(handles) == 4  # A and B of q_proj and v_proj
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, clean)  # eval mode: clean
    model.train()
    noisy1, noisy2 = model(input_ids=x).logits, model(input_ids=x).logits
    assert not torch.allclose(noisy1, clean) and not torch.allclose(noisy1, noisy2)  # fresh noise each forward
    noisy1.sum().backward()  # gradients flow to the clean LoRA weights
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x).logits, clean)  # no-grad forward (reference, scoring): clean
    after = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.save_pretrained(tmp_path / "adapter")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    for k, v in saved.items():
        match = [b for name, b in before.items() if name.replace(".default", "") == k]
        assert match and torch.equal(match[0], v)


def test_grpo_rewards_on_hand_made_answers():
    cands = [["Toy Story (1995)", "Heat (1995)", "Fargo (1996)"]] * 4
    answers = ["Fargo (1996)"] * 4
    completions = ["Fargo (1996)", " fargo (1996). ", "Heat (1995)", "Fargo (1996)\nHeat (1995)"]
    assert accuracy_reward(completions, answer=answers) == [1.0, 1.0, 0.0, 1.0]
    assert format_reward(completions, candidates=cands) == [1.0, 1.0, 1.0, 0.0]  # two titles is not one candidate
    assert format_reward(["Casablanca"], candidates=cands[:1]) == [0.0]
    vec = {"Fargo (1996)": [1.0, 0.0], "Heat (1995)": [0.6, 0.8]}
    sim = similarity_reward_fn(lambda texts: np.array([vec.get(t.strip(), [0.0, 1.0]) for t in texts]))
    assert sim(["Fargo (1996)", "Heat (1995)", "??"], answer_vec=[[1.0, 0.0]] * 3) == pytest.approx([1.0, 0.6, 0.0])


def test_candidate_ranks_pessimistic_ties():
    assert candidate_ranks(np.array([0.1, 0.5, 0.3]), target=2) == 2
    assert candidate_ranks(np.array([0.3, 0.5, 0.3]), target=2) == 3  # a tie counts against the target
    assert candidate_ranks(np.array([0.9, 0.5, 0.3]), target=0) == 1


def test_metrics_from_scores_on_a_hand_made_case():
    exs = [Example(1, None, [], ["a", "b", "c"], target=0), Example(2, None, [], ["a", "b", "c"], target=2)]
    res = metrics_from_scores(exs, [np.array([0.9, 0.5, 0.3]), np.array([0.3, 0.5, 0.3])])
    assert res["ranks"].tolist() == [1, 3]
    m = res["metrics"]
    assert m["hr@1"] == 0.5 and m["hr@5"] == 1.0
    assert m["ndcg@5"] == pytest.approx((1 + 1 / np.log2(4)) / 2)
    assert m["auc"] == pytest.approx((1.0 + 0.25) / 2)  # user 2: one tie (1/2) and one loss out of 2


def test_kv_cached_scores_equal_full_sequence_scores(models_dir, tmp_path):
    """Scoring with the prompt's cache repeated per title equals scoring each prompt+title separately."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.llm.tiny import build_tiny_causal_lm

    path = build_tiny_causal_lm(models_dir / "tiny-llama", models_dir)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    prompt, titles = "<|im_start|>user\nPick one<|im_end|>\n<|im_start|>assistant\n", ["Heat (1995)", "M", "Fargo"]
    fast = score_titles(model, tok, prompt, titles)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    for t, s in zip(titles, fast):
        ids = tok(t, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + ids])).logits[0]
        logp = torch.log_softmax(logits, -1)[len(p) - 1 : -1].gather(1, torch.tensor(ids)[:, None]).mean()
        assert s == pytest.approx(float(logp), abs=1e-4)


@pytest.mark.parametrize("name", ["zero2.json", "zero3.json"])
def test_deepspeed_configs_are_valid_and_match_trainer_arguments(name):
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from training.llm.trainers import StageConfig

    path = REPO / "infra" / "deepspeed" / name
    cfg = json.loads(path.read_text())
    assert cfg["zero_optimization"]["stage"] == int(name[4])
    kw = StageConfig(batch_size=4, grad_accum=2, lr=5e-5).trainer_kwargs(Path("/tmp/unused"))
    kw.update(bf16=False, use_cpu=True, deepspeed=None)
    args = TrainingArguments(**kw)
    ds = HfTrainerDeepSpeedConfig(str(path))
    ds.trainer_config_process(args)
    from types import SimpleNamespace

    qwen3b = SimpleNamespace(config=SimpleNamespace(hidden_size=2048))  # Qwen2.5-3B's width fills the bucket sizes
    ds.trainer_config_finalize(args, model=qwen3b, num_training_steps=100)
    final = ds.config
    assert final["train_micro_batch_size_per_gpu"] == 4 and final["gradient_accumulation_steps"] == 2
    assert final["optimizer"]["params"]["lr"] == 5e-5
    assert final["scheduler"]["params"]["total_num_steps"] == 100
    assert final["zero_optimization"]["reduce_bucket_size"] == 2048 * 2048
    assert "auto" not in json.dumps(final)


@pytest.mark.slow
def test_llm_track_end_to_end_through_dagster(tmp_path, models_dir, monkeypatch):
    """SFT -> DPO (stochastic top-K) / HaNoRec / GRPO -> evaluation on a tiny random-weight model, synthetic data,
    in the pointwise formulation: every stage registers an adapter and the evaluation writes sampled_21 metrics for
    all five models and popularity, with paired tests against SFT in the asset's table. (The listwise default runs
    end to end in the docs test: `recalign llm sft/dpo/eval` on MovieLens and `benchmarks/llm.py`.)"""
    formulation = "pointwise"
    import dagster as dg

    from assets.embeddings.pipeline import embed_text_table
    from assets.ingest.pipeline import DatasetSpec, build_sequences, build_warehouse
    from assets.llmrec import defs
    from assets.resources import DatasetResource, RecalignHome
    from assets.summaries.backends import TemplateSummarizer
    from assets.summaries.summarize import sample_users, summarize_items, summarize_users
    from recalign.metrics_store import MetricsStore
    from recalign.registry import Registry
    from recalign.settings import Settings
    from recalign.warehouse import Warehouse
    from training.llm.tiny import build_tiny_causal_lm

    home = Settings.from_env(tmp_path / "home")
    build_warehouse(home, DatasetSpec())
    build_sequences(home, DatasetSpec())
    wh = Warehouse(home.warehouse_path("synthetic"))
    summarize_items(wh, TemplateSummarizer())
    summarize_users(wh, TemplateSummarizer(), sample_users(wh, 8, 0), max_blocks=2)
    embed_text_table(home, "synthetic", "item_text")
    tiny = str(build_tiny_causal_lm(models_dir / "tiny-llama", models_dir))
    common = {"base_model": tiny, "n_users": 8, "max_steps": 2, "batch_size": 4, "max_length": 512}
    common["formulation"] = formulation
    run_config = {
        "ops": {
            "llm_sft": {"config": common},
            "llm_dpo": {"config": {**common, "sampler": "stochastic_topk", "topk": 2}},
            "llm_hanorec": {"config": {**common, "sampler": "random", "noise_sigma": 0.1}},
            "llm_grpo": {"config": {**common, "num_generations": 2, "max_completion_length": 8}},
            "llm_eval": {"config": {**common, "eval_users": 6}},
        }
    }
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("datasets", ["synthetic"])
    result = dg.materialize(
        defs.assets,
        instance=instance,
        partition_key="synthetic",
        run_config=run_config,
        resources={"recalign": RecalignHome(home=str(home.home)), "dataset": DatasetResource()},
    )
    assert result.success
    table = result.asset_materializations_for_node("llm_eval")[0].metadata["metrics"].value
    assert "auc vs SFT" in table and "ndcg@5 vs SFT" in table
    reg = Registry(home.registry_dir("synthetic"))
    suffix = "" if formulation == "listwise" else "_pointwise"
    for name in ("llm_sft", "llm_dpo", "llm_hanorec", "llm_grpo"):
        v = reg.latest(name + suffix)
        assert v.card["formulation"] == formulation
        assert v is not None and (v.path / "adapter_model.safetensors").exists()
        assert (v.path / "adapter_config.json").exists() and not list(v.path.glob("*.bin"))
    assert reg.latest("llm_hanorec" + suffix).card["mean_hardness"] is not None
    assert reg.latest("llm_hanorec" + suffix).card["hardness_source"] == "text"  # auto: no sequential model here
    m = MetricsStore(home.metrics_path).read(
        "SELECT variant, metric, k, value FROM metrics WHERE family = 'llm' AND protocol = 'sampled_21'"
    )
    stages = {v + suffix for v in ("sft", "dpo", "hanorec", "grpo")}
    assert set(m["variant"]) == {"popularity", "zero_shot", *stages}
    auc = m[m["metric"] == "auc"]["value"]
    assert len(auc) == 6 and auc.between(0, 1).all()
    ranks = MetricsStore(home.metrics_path).read(
        "SELECT r.run_id, r.rank FROM user_ranks r JOIN runs USING (run_id) WHERE runs.family = 'llm'"
    )
    assert len(ranks) == 6 * 6 and ranks["rank"].between(1, 21).all()  # per-user ranks kept for paired tests
