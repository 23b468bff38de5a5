"""Text the rules allow (C4, Chinese Alpaca): the bundled samples offline, `datasets` on a connected machine.

Splits of C4, document-disjoint by construction:
  - "train": calibration (criteria, OWL, Gram matrices) and distillation / Track 2 training;
  - "heldout": what the product itself measures on (the search's fitness, `evaluate`, distillation reports);
  - "dev" / "test": reserved for benchmark judges (bench/search_quality*.py): nothing in the product reads
    them, so a judge is document-disjoint from every calibration and every fitness. Settings are chosen on
    "dev" and reported on "test".
Bundled C4 (300 documents): 0-199 train, 200-219 dev, 220-239 test, 240-299 heldout. On the hub, C4's held-out
text is its validation split and dev / test are train-split documents whose CRC-32 falls in one of
HUB_JUDGE_EVERY buckets each (never yielded as train). Chinese Alpaca has only a train split, so a document is
held out when the CRC-32 of its text falls in 1 of HUB_HELDOUT_EVERY buckets (disjoint by construction,
whatever the dataset's size or order) and the train side never yields it; it has no judge splits.
"""
from __future__ import annotations

import json
import zlib
from functools import lru_cache
from pathlib import Path

BUNDLED_DATA = Path(__file__).parent / "_bundled" / "data"
HELDOUT_START = 240
JUDGE_DOCS = {"dev": (200, 220), "test": (220, 240)}   # bundled C4 documents reserved for benchmark judges
SPLITS = ("train", "heldout", "dev", "test")
ALLOWED_SOURCES = ("c4", "alpaca_zh")
HUB_IDS = {"c4": ("allenai/c4", "en"), "alpaca_zh": ("shibing624/alpaca-zh", None)}
HUB_HELDOUT_EVERY = 10          # Alpaca on the hub: ~10 % of its documents held out, like the bundled sample
HUB_JUDGE_EVERY = 50            # C4 on the hub: ~2 % of the train split for each judge split (dev, test)
SCORE_BATCH = 8                 # documents per forward pass when ranking them by the model's NLL


def hub_split(name: str, text: str) -> str:
    """The split a document of `name`'s hub train split belongs to: "train", "heldout" (Alpaca) or "dev" /
    "test" (C4's judge documents)."""
    crc = zlib.crc32(text.encode("utf-8"))
    if name == "c4":
        return {0: "dev", 1: "test"}.get(crc % HUB_JUDGE_EVERY, "train")
    return "heldout" if crc % HUB_HELDOUT_EVERY == 0 else "train"


def hub_heldout(name: str, text: str) -> bool:
    """Whether a document of `name`'s hub train split is kept out of training and calibration."""
    return hub_split(name, text) != "train"


def check_source(name: str) -> str:
    if name not in ALLOWED_SOURCES:
        raise ValueError(f"dataset {name!r} is not allowed: the competition rules permit only C4 and "
                         f"Chinese Alpaca for any training or calibration ({', '.join(ALLOWED_SOURCES)})")
    return name


@lru_cache(maxsize=None)
def _bundled(name: str) -> tuple[str, ...]:
    if name == "c4":
        lines = (BUNDLED_DATA / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()
        return tuple(json.loads(line)["text"] for line in lines if line.strip())
    records = json.loads((BUNDLED_DATA / "alpaca_zh_demo.json").read_text(encoding="utf-8"))
    return tuple("\n".join(x for x in (r["instruction"], r.get("input", ""), r["output"]) if x) for r in records)


def texts(name: str = "c4", *, split: str = "train", hub: bool = False, limit: int | None = None) -> list[str]:
    """Documents of an allowed source. split: "train" (calibration / distillation), "heldout" (fitness and
    evaluation) or, for C4, "dev" / "test" (benchmark judges only; see the module docstring)."""
    check_source(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split in JUDGE_DOCS and name != "c4":
        raise ValueError(f"{name} has no {split!r} split: the judge splits are C4's")
    if hub:
        return _hub_texts(name, split, limit or 1000)
    docs = _bundled(name)
    if name == "c4":
        start, end = JUDGE_DOCS.get(split, (0, JUDGE_DOCS["dev"][0]) if split == "train" else (HELDOUT_START, None))
        docs = docs[start:end]
    else:  # alpaca: last 10 % held out
        cut = int(len(docs) * 0.9)
        docs = docs[:cut] if split == "train" else docs[cut:]
    return list(docs[:limit] if limit else docs)


def row_text(row: dict) -> str:
    """A hub row's document: C4's text, or Alpaca's instruction, input and output."""
    return row["text"] if "text" in row else "\n".join(str(row[k]) for k in ("instruction", "input", "output")
                                                     if row.get(k))


def _hub_texts(name: str, split: str, limit: int) -> list[str]:
    try:
        import datasets
        repo, config = HUB_IDS[name]
        source_split = "validation" if (split == "heldout" and name == "c4") else "train"
        stream = datasets.load_dataset(repo, config, split=source_split, streaming=True)
        out = []
        for row in stream:
            text = row_text(row)
            if (name == "c4" and split == "heldout") or hub_split(name, text) == split:
                out.append(text)
            if len(out) >= limit:
                break
        return out
    except Exception as err:  # offline, or hub unreachable: say what to do instead
        raise ValueError(f"could not stream {name} from the Hugging Face hub ({type(err).__name__}); "
                         "use the bundled sample (omit --hub-data) or run on a connected machine") from None


def token_blocks(tokenizer, docs: list[str], *, seq_len: int, count: int):
    """Pack documents into `count` blocks of `seq_len` token ids (BOS-separated), as a LongTensor."""
    import torch
    ids: list[int] = []
    bos = tokenizer.bos_token_id
    for doc in docs:
        ids.extend(([bos] if bos is not None else []) + tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"])
        if len(ids) >= seq_len * count:
            break
    usable = (len(ids) // seq_len) * seq_len
    if usable == 0:
        raise ValueError("not enough text to build one calibration block")
    blocks = torch.tensor(ids[:usable], device="cpu").reshape(-1, seq_len)   # host-side; callers move it
    return blocks[:count]


def predictable_documents(model, tokenizer, docs: list[str], *, fraction: float, seq_len: int) -> list[str]:
    """The `fraction` of `docs` the (dense) model predicts best: lowest mean next-token NLL over each document's
    first `seq_len` tokens (BOS included), in their given order. Calibrating on them keeps the statistics in the
    model's own domain while reading only allowed text (bench/reconstruction_limits.py measured why)."""
    import torch
    device = next(model.parameters()).device
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = [(bos + tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"])[:seq_len] for doc in docs]
    nll = [float("inf")] * len(docs)           # a document of one token predicts nothing: never selected
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(ids):
        if len(row) >= 2:
            by_length.setdefault(len(row), []).append(i)
    with torch.no_grad():
        for length, members in by_length.items():      # equal lengths batch without padding
            for start in range(0, len(members), SCORE_BATCH):
                batch = members[start:start + SCORE_BATCH]
                tokens = torch.tensor([ids[i] for i in batch], device=device)
                logits = model(input_ids=tokens, use_cache=False).logits[:, :-1].float()
                loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
                for i, value in zip(batch, loss.mean(1).tolist()):
                    nll[i] = value
    keep = max(1, round(len(docs) * fraction))
    chosen = set(sorted(range(len(docs)), key=lambda i: (nll[i], i))[:keep])
    return [doc for i, doc in enumerate(docs) if i in chosen]
