"""Track 2 in compress: tokenizers trained on the allowed data, models built from an Arch, LM-only DeepSpeed
training that really learns, the hub stream's sharding and held-out filter, and export to llama.cpp."""
import dataclasses

import numpy as np
import pytest
import torch

import compress
import objectives
from compress import Arch, ScratchSchedule
from compress._scratch import StreamMixer, _hub_documents

PER_LAYER = Arch(layers=3, hidden=32, heads=4, kv_heads=2, head_dim=16, ffn=(48, 64, 80), tie=False, vocab=320,
                 context=64)
UNIFORM = dataclasses.replace(PER_LAYER, ffn=(64,) * 3, tie=True)
TEXT = "The quick brown fox. 细胞理论是生物科学的一个理论 42!"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "bpe-320"
    compress.train_tokenizer(320, out)
    return compress.load_tokenizer(out)


def test_tokenizer_is_byte_level_on_allowed_data_only(tokenizer, tmp_path):
    assert len(tokenizer) == 320 and tokenizer.bos_token_id == 0 and tokenizer.eos_token_id == 1
    ids = tokenizer(TEXT)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    with pytest.raises(ValueError, match="'wikitext' is not allowed"):
        compress.train_tokenizer(320, tmp_path / "t", sources=("c4", "wikitext"))
    with pytest.raises(ValueError, match="vocabulary size"):
        compress.train_tokenizer(100, tmp_path / "t")
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("arch", [PER_LAYER, UNIFORM], ids=["per-layer-untied", "uniform-tied"])
def test_built_model_matches_its_arch_and_round_trips_through_save(arch, tokenizer, tmp_path):
    model = compress.build_scratch_model(arch, tokenizer=tokenizer)
    assert sum(p.numel() for p in model.parameters()) == arch.params()
    assert compress.shapes_from_config(model.config) == arch.shapes()
    stds = [p.std().item() for n, p in model.named_parameters() if p.dim() == 2]
    assert all(0.015 < s < 0.025 for s in stds), "every matrix initialised like HF Llama (std 0.02)"
    compress.save_pruned(model, tokenizer, tmp_path / "m", summary={"arch": arch.to_dict()}, dtype=torch.float32)
    loaded, tok = compress.load_model(tmp_path / "m")
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert tok(TEXT)["input_ids"] == ids[0].tolist()


def test_schedule_reports_exactly_rungs_times_and_refuses_a_teacher():
    for tokens, rungs in [(5 * 64 * 2, 4), (98 * 2048, 3), (7 * 64 * 2, 7), (100 * 128, 3)]:
        s = ScratchSchedule.for_tokens(tokens, seq_len=64, batch_size=2, lr=1e-3, warmup=0.1, rungs=rungs)
        steps = s.report_steps()
        assert len(set(steps)) == rungs and steps[-1] == s.steps and steps == sorted(steps)
    with pytest.raises(ValueError, match="distillation from a teacher is not allowed"):
        ScratchSchedule(steps=10, kd_weight=0.5)
    with pytest.raises(ValueError, match="fewer than the 3 fidelity rungs"):
        ScratchSchedule.for_tokens(100, seq_len=64, batch_size=2, lr=1e-3, warmup=0.0, rungs=3)
    with pytest.raises(ValueError, match="'wikitext' is not allowed"):
        ScratchSchedule.for_tokens(10_000, seq_len=64, batch_size=2, lr=1e-3, warmup=0.0, mix={"wikitext": 1.0})


def test_training_from_scratch_learns_on_c4_and_alpaca(tokenizer):
    model = compress.build_scratch_model(PER_LAYER, tokenizer=tokenizer, seed=1)
    heldout = objectives.HeldoutObjective(seq_len=64)
    candidate = objectives.Candidate(shapes=PER_LAYER.shapes(), model=model, tokenizer=tokenizer)
    before = heldout.evaluate(candidate, objectives.EvalContext(), 0)
    schedule = ScratchSchedule.for_tokens(40_000, seq_len=64, batch_size=16, lr=1e-2, warmup=0.1, rungs=2,
                                          mix={"c4": 0.5, "alpaca_zh": 0.5}, precision="fp32")
    reports = []
    trained, history = compress.train_scratch(model, tokenizer, schedule,
                                              on_report=lambda step, m: reports.append((step, m)) and False)
    assert [s for s, _ in reports] == schedule.report_steps() and history[-1]["tokens"] >= 40_000
    assert history[-1]["loss"] < history[0]["loss"] < np.log(320)
    assert next(trained.parameters()).dtype == torch.float32 and not trained.training
    candidate.model = trained
    after = heldout.evaluate(candidate, objectives.EvalContext(), 0)
    for source in ("c4", "alpaca_zh"):      # learnt on both held-out sets (from ~4.1 nats/byte, uniform guessing)
        assert after[f"{source}_nats_per_byte"] < 0.85 * before[f"{source}_nats_per_byte"]


def test_hub_stream_shards_by_rank_and_never_yields_heldout_documents(monkeypatch, tokenizer):
    import datasets
    heldout = compress.texts("alpaca_zh", split="heldout")[0]
    rows = [{"instruction": f"问题 {i}", "output": f"回答 {i}"} for i in range(10)]
    rows.insert(3, {"instruction": heldout, "input": "", "output": ""})   # a bundled held-out record
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: rows)
    take = lambda gen, n: [next(gen) for _ in range(n)]          # noqa: E731
    rank0 = take(_hub_documents("alpaca_zh", rank=0, world=2, seed=0), 5)
    rank1 = take(_hub_documents("alpaca_zh", rank=1, world=2, seed=0), 5)
    assert not set(rank0) & set(rank1) and heldout not in rank0 + rank1
    mixer = StreamMixer(tokenizer, {"alpaca_zh": 1.0}, seq_len=16, seed=0)
    assert mixer.batch(3).shape == (3, 16)
    with pytest.raises(ValueError, match="'wikitext' is not allowed"):
        next(_hub_documents("wikitext", rank=0, world=1, seed=0))


def test_gguf_of_a_per_layer_scratch_model_tokenizes_and_computes_like_pytorch(tokenizer, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from compress._export_gguf import export_gguf
    model = compress.build_scratch_model(PER_LAYER, tokenizer=tokenizer, seed=2)
    compress.save_pruned(model, tokenizer, tmp_path / "m", dtype=torch.float32)
    path = export_gguf(tmp_path / "m", tmp_path / "m.gguf", dtype="f32")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False, type_k=0, type_v=0, flash_attn=False,
                          logits_all=True)
    ids = tokenizer(TEXT)["input_ids"]
    assert llm.tokenize(TEXT.encode(), add_bos=True) == ids       # the byte-level BPE survives the export
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    llm.eval(ids)
    assert float(np.abs(np.asarray(llm.scores[:len(ids)]) - ref).max()) < 1e-3


def test_hub_alpaca_heldout_is_disjoint_from_what_trains(monkeypatch):
    """Chinese Alpaca has one hub split: held-out and training documents are told apart by a hash of the text,
    so the held-out side never overlaps what is calibrated or trained on; C4 holds out its validation split."""
    import datasets
    rows = [{"instruction": f"问题 {i}", "input": "", "output": f"回答 {i}"} for i in range(200)]
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: asked.append((a, k["split"])) or rows)
    train = compress.texts("alpaca_zh", split="train", hub=True, limit=1000)
    heldout = compress.texts("alpaca_zh", split="heldout", hub=True, limit=1000)
    assert heldout and train and not set(train) & set(heldout) and len(train) + len(heldout) == 200
    assert 5 <= len(heldout) <= 40                                     # about 1 in HUB_HELDOUT_EVERY
    streamed = [next(gen) for gen in [_hub_documents("alpaca_zh", rank=0, world=1, seed=0)] for _ in range(300)]
    assert not set(streamed) & set(heldout) and set(streamed) == set(train)
    c4 = [{"text": f"doc {i}"} for i in range(5)]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: asked.append((a, k["split"])) or c4)
    assert compress.texts("c4", split="heldout", hub=True, limit=5) == [r["text"] for r in c4]
    assert asked[-1] == (("allenai/c4", "en"), "validation") and asked[0][1] == "train"
