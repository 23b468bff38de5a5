"""Faithful mode: every proxy task scored the way the competition's OpenCompass configs score it, by the project's
own batched greedy scorer (objectives._oc_generate), on the proxy's item subsets.

For each task, as its config (OpenCompass 0.5.4) does:
    config                               prompt                       max_out_len  extraction -> credit
    commonsenseqa_7shot_cot_gen_734a22   7-shot CoT, ice begin ''     model's      'so the answer is X' == key
    bbh_gen (= bbh_gen_ee62e9)           3-shot CoT lib_prompt        model's      mcq: first '(X)' after the first
                                                                                   'answer is '; free form: after
                                                                                   the last 'answer is', casefold
    gsm8k_gen (= gsm8k_gen_1d7fe4)       4-shot CoT                   512          last number before 'Question:'
    humaneval_gen (= ..._dcae0e)         'Read the following ...'     model's      first ``` block, human_eval run
    truthfulqa_gen (= _5ddc62)           the bare question            model's      BLEU: best true ref > best false
    FewCLUE_chid_gen (= _0a29a2)         7 idioms, 请选择...           model's      first capital letter == answer
"model's" = the model's max_out_len: the competition passed --max-out-len 1024 (COMPETITION_MAX_OUT_LEN).
Prompts are rendered as OpenCompass renders them: base models (no chat template) get the rounds joined by
newlines (LMTemplateParser without a meta template); chat models get the rounds as messages through
APITemplateParser's default meta template (which leaves a trailing newline on every user turn) and the
tokenizer's chat template. Fields are substituted in the dataset's column order, the answer column blanked.

Differences from the competition kit's OpenCompass 0.3.1: bbh_gen was bbh_gen_5b92b0 (same prompts, max_out_len
512), humaneval_gen was humaneval_gen_8e312c ('Complete the following python code:\n{prompt}', max_out_len 512),
bbh_freeform_postprocess differed (objectives._oc_post), and the kit's own truthfulqa_gen scored with an LLM judge
(allenai/truthfulqa-truth-judge-llama2-7B, metrics=['truth']), not BLEU; 0.3.1 also loaded models in FP16 unless
told otherwise (0.5.4 reads the checkpoint's dtype). The faithful mode follows 0.5.4, the package installed here.

TruthfulQA: OpenCompass leaves blank answers out of its mean; here a blank answer's credit is 0 (so per-item
agreement can be counted) and the task accuracy is OpenCompass's mean over the non-blank ones (0 when all are
blank, as objectives/_oc_shims scores that case).
"""
from __future__ import annotations

import json
from functools import lru_cache

from . import _oc_post as post
from ._make_subsets import BBH_MULTIPLE_CHOICE
from ._oc_generate import generate_like_opencompass
from ._opencompass import COMPETITION_MAX_OUT_LEN
from ._scoring import PROGRAM_TIMEOUT, run_programs
from ._tasks import PROMPTS, bbh_hint

ICE_TOKEN = "</E>"
BBH_TEMPLATE = "Follow the given examples and answer the question.\n{hint}\n\nQ: {{input}}\nA: Let's think step by step."
LETTERS = "ABCDEFG"
# APITemplateParser's default meta template: roles in round order, and the role each is sent as
META_ROUND = (("HUMAN", "HUMAN"), ("SYSTEM", "HUMAN"), ("BOT", "BOT"))
CHAT_ROLE = {"HUMAN": "user", "BOT": "assistant", "SYSTEM": "system"}


@lru_cache(maxsize=None)
def _rounds(name: str) -> tuple[tuple[str, str], ...]:
    return tuple((r["role"], r["prompt"]) for r in json.loads((PROMPTS / f"{name}.json").read_text(encoding="utf-8")))


# ---- the competition's dataset configs, one entry per proxy task ------------------------------------
def _bbh_mcq(item) -> bool:
    return item["subtask"] in BBH_MULTIPLE_CHOICE


SPEC = {
    # task: (dataset config, template rounds(item), begin, entry(item) in column order, answer column,
    #        dataset max_out_len, OpenCompass dataset abbr(item), settled(item))
    "csqa": dict(
        config="commonsenseqa_7shot_cot_gen_734a22", rounds=lambda item: _rounds("csqa"), begin=ICE_TOKEN,
        entry=lambda x: {"question": x["question"], **{k: x["choices"][k] for k in "ABCDE"}, "answerKey": x["answer"]},
        output="answerKey", max_out_len=None, group=lambda x: "commonsense_qa",
        settled=lambda x: post.match_answer_settled),
    "bbh": dict(
        config="bbh_gen", rounds=lambda x: (("HUMAN", BBH_TEMPLATE.format(hint=bbh_hint(x["subtask"]))),), begin=None,
        entry=lambda x: {"input": x["input"], "target": x["target"]}, output="target", max_out_len=None,
        group=lambda x: f"bbh-{x['subtask']}",
        settled=lambda x: post.bbh_mcq_settled if _bbh_mcq(x) else post.never_settled),
    "gsm8k": dict(
        config="gsm8k_gen", rounds=lambda x: _rounds("gsm8k"), begin=None,
        entry=lambda x: {"question": x["question"], "answer": x["answer"]}, output="answer", max_out_len=512,
        group=lambda x: "gsm8k", settled=lambda x: post.gsm8k_settled),
    "humaneval": dict(
        config="humaneval_gen", rounds=lambda x: _rounds("humaneval"), begin=None,
        entry=lambda x: {"task_id": x["id"], "prompt": x["prompt"], "canonical_solution": x["canonical_solution"],
                         "test": x["test"], "entry_point": x["entry_point"]},
        output="task_id", max_out_len=None, group=lambda x: "openai_humaneval", settled=lambda x: post.humaneval_settled),
    "truthfulqa": dict(
        config="truthfulqa_gen", rounds=lambda x: (("HUMAN", "{question}"),), begin=None,
        entry=lambda x: {"type": "", "category": x.get("category", ""), "question": x["question"], "source": "",
                         "reference": ""},
        output="reference", max_out_len=None, group=lambda x: "truthful_qa", settled=lambda x: post.never_settled),
    "chid": dict(
        config="FewCLUE_chid_gen", rounds=lambda x: _rounds("chid"), begin=None,
        entry=lambda x: {"content": x["content"].replace("#idiom#", "______"),
                         **{LETTERS[i]: c for i, c in enumerate(x["candidates"])}, "answer": LETTERS[x["answer"]]},
        output="answer", max_out_len=None, group=lambda x: "chid-dev" if "/dev_few_all/" in x["id"] else "chid-test",
        settled=lambda x: post.first_capital_settled),
}


def _fill(text: str, entry: dict) -> str:
    """opencompass.utils.prompt.safe_format: each field replaced in turn, in the entry's order."""
    for key, value in entry.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def prompt_items(task: str, item: dict) -> list:
    """The PromptList OpenCompass builds for one item in gen mode: the template's begin string (ice token -> ''),
    then (role, prompt) rounds, fields filled and the answer column blanked."""
    spec = SPEC[task]
    entry = {**spec["entry"](item), spec["output"]: ""}
    ice = (lambda text: text.replace(ICE_TOKEN, "")) if spec["begin"] is not None else (lambda text: text)
    seq: list = [] if spec["begin"] is None else [_fill(ice(spec["begin"]), entry)]
    return seq + [(role, _fill(ice(text), entry)) for role, text in spec["rounds"](item)]


def render_base(seq: list) -> str:
    """LMTemplateParser.parse_template without a meta template: non-empty parts joined by newlines; an empty
    part still sets the separator (so an empty begin puts a newline before the first round)."""
    prompt, sep = "", ""
    for part in seq:
        text = part if isinstance(part, str) else part[1]
        if text:
            prompt += sep + text
        sep = "\n"
    return prompt


def render_chat(seq: list) -> list[dict]:
    """APITemplateParser (default meta template) + _convert_chat_messages: one message per role turn. Each round
    emits HUMAN, then SYSTEM as an (empty) HUMAN turn, then BOT; the round being generated stops before BOT;
    consecutive same-role turns are joined with a newline (hence the trailing newline on user turns)."""
    order = {role: i for i, (role, _) in enumerate(META_ROUND)}
    rounds, last = [], len(order)
    for part in seq:
        if isinstance(part, str):
            continue                      # strings outside rounds are ignored for API-style templates
        if order[part[0]] <= last:
            rounds.append({})
        rounds[-1][part[0]] = part[1]
        last = order[part[0]]
    turns = []
    for n, round_ in enumerate(rounds):
        for role, api_role in META_ROUND:
            if role == "BOT" and n == len(rounds) - 1:
                break
            turns.append([api_role, round_.get(role, "")])
    merged = []
    for role, text in turns:
        if merged and merged[-1][0] == role:
            merged[-1][1] += "\n" + text
        else:
            merged.append([role, text])
    messages = []
    for role, text in merged:
        if not text:
            continue
        if messages and messages[-1]["role"] == CHAT_ROLE[role]:
            messages[-1]["content"] += "\n" + text
        else:
            messages.append({"role": CHAT_ROLE[role], "content": text})
    return messages


def is_chat(tokenizer, hf_type: str = "auto") -> bool:
    """objectives._opencompass.resolve_hf_type for a loaded tokenizer: chat when it has a chat template."""
    if hf_type not in ("auto", "base", "chat"):
        raise ValueError(f"hf_type must be auto, base or chat, got {hf_type!r}")
    has = bool(getattr(tokenizer, "chat_template", None))
    if hf_type == "chat" and not has:
        raise ValueError("hf_type 'chat' needs a tokenizer chat template, and this tokenizer has none; use 'base'")
    return has if hf_type == "auto" else hf_type == "chat"


def check_items(task: str, items: list[dict]) -> None:
    """Data the faithful task needs that the items lack: one line naming it and how to get it."""
    if task == "truthfulqa":
        missing = [x.get("id") for x in items if "correct_answers" not in x]
        if missing:
            raise ValueError(f"faithful truthfulqa needs the generation references (correct / incorrect answers) "
                             f"that {len(missing)} items lack, e.g. {missing[0]}: put TruthfulQA.csv "
                             "(sylinrl/TruthfulQA) beside mc_task.json in the data directory, or use the shipped data")


# ---- scoring ------------------------------------------------------------------------------------------
def score_faithful(model, tokenizer, task: str, items: list[dict], *, max_out_len: int | None = None,
                   early_stop: bool = True, hf_type: str = "auto", program_timeout: float = PROGRAM_TIMEOUT,
                   batch_size: int | None = None, unsafe_exec: bool = False):
    """(credits, texts, accuracy) for `items` of `task`, in item order. Items are batched as OpenCompass batches
    them: per dataset abbr (BBH subtask, CHID file), consecutive, `batch_size` rows at a time.
    max_out_len: None = the config's own, else the competition's 1024; an int caps every task (as
    run_opencompass(max_out_len=N) does). early_stop: stop a row once its answer is settled (same score; the
    text is then a prefix of OpenCompass's). HumanEval programs run in objectives._sandbox (unsafe_exec: without
    isolation where bubblewrap is missing)."""
    spec = SPEC[task]
    check_items(task, items)
    chat = is_chat(tokenizer, hf_type)
    budget = max_out_len or spec["max_out_len"] or COMPETITION_MAX_OUT_LEN
    texts: list[str | None] = [None] * len(items)
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(spec["group"](item), []).append(i)
    for rows in groups.values():
        seqs = [prompt_items(task, items[i]) for i in rows]
        prompts = [render_chat(s) for s in seqs] if chat else [render_base(s) for s in seqs]
        rules = [spec["settled"](items[i]) if early_stop else None for i in rows]
        kwargs = {"batch_size": batch_size} if batch_size else {}
        outs = generate_like_opencompass(model, tokenizer, prompts, max_out_len=budget, chat=chat, settled=rules,
                                         **kwargs)
        for i, text in zip(rows, outs):
            texts[i] = text
    credits, accuracy = credit(task, items, texts, program_timeout=program_timeout, unsafe_exec=unsafe_exec)
    return credits, texts, accuracy


def credit(task: str, items: list[dict], texts: list[str], *, program_timeout: float = PROGRAM_TIMEOUT,
           unsafe_exec: bool = False):
    """(per-item credit, task accuracy as a fraction) from generated texts, as the config's evaluator scores."""
    if task == "humaneval":
        programs = [post.humaneval_check_program(x, post.humaneval_postprocess(t)) for x, t in zip(items, texts)]
        credits = [float(ok) for ok in run_programs(programs, timeout=program_timeout, unsafe=unsafe_exec)]
    elif task == "truthfulqa":
        scores = [post.truthfulqa_bleu(t, x["correct_answers"], x["incorrect_answers"]) for x, t in zip(items, texts)]
        credits = [float(s["acc"]) if s else 0.0 for s in scores]
        answered = [s["acc"] for s in scores if s]
        return credits, (sum(answered) / len(answered) if answered else 0.0)
    else:
        credits = [float(_correct(task, x, t)) for x, t in zip(items, texts)]
    return credits, (sum(credits) / len(credits) if credits else 0.0)


def _correct(task: str, item: dict, text: str) -> bool:
    if task == "csqa":
        return post.match_answer_pattern(text) == item["answer"]
    if task == "gsm8k":
        return post.gsm8k_equal(post.gsm8k_postprocess(text), item["answer"])
    if task == "chid":
        return post.first_capital(text) == LETTERS[item["answer"]]
    if _bbh_mcq(item):
        return post.bbh_mcq_postprocess(text) == post.bbh_mcq_postprocess(item["target"])
    return post.bbh_freeform_postprocess(text).casefold() == post.bbh_freeform_postprocess(item["target"]).casefold()
