"""Track 2 training: a freshly initialised model trained on C4 + Alpaca-zh with the LM loss only, on DeepSpeed.

The engine, optimizer, learning-rate schedule, data mixing and process-group handling are distillation's
(compress/_distill.py, compress/_distill_data.py), imported rather than copied: `ScratchSchedule` is a
`DistillSchedule` whose teacher terms are pinned to zero, so the same AdamW + warm-up/cosine schedule,
DeepSpeed config and C4/Alpaca-only mix checks apply. There is no teacher argument anywhere: Track 2
forbids distilling from a pre-trained model, and a schedule with a KD or hidden-state weight is refused.

Data: the bundled samples' training split (offline), or with `hub=True` an endless `datasets` stream of
allenai/c4 (en) and Alpaca-zh, sharded by rank, shuffled in a buffer, with the bundled held-out documents
filtered out so held-out scores stay held out. Several GPUs: call `train_scratch` in every worker process
(deepspeed launcher, torchrun, or Ray Train's TorchTrainer); rank and world size come from the
environment exactly as in `compress.distill`, rank 0 reports and decides early stops for all ranks.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass

import torch

from ._data import HUB_IDS, check_source, hub_heldout, row_text, texts
from ._distill import (DistillSchedule, _agree, _ds_config, _finish, _process_group, available_memory, check_fits,
                       estimate_training_memory)
from ._distill_data import BlockMixer, check_mix, lm_loss

STREAM_SHUFFLE_BUFFER = 10_000     # documents held by the hub stream's shuffle buffer


@dataclass(frozen=True, kw_only=True)
class ScratchSchedule(DistillSchedule):
    """Distillation's schedule with no teacher: LM cross-entropy only. Build it with `for_tokens`."""
    kd_weight: float = 0.0
    hidden_weight: float = 0.0
    tokens: int = 0                    # the token budget the steps were derived from (informational)
    rungs: int = 1                     # reports: after each 1/rungs of the steps (ASHA's fidelity rungs)

    def __post_init__(self):
        if self.kd_weight or self.hidden_weight:
            raise ValueError("Track 2 trains from scratch: distillation from a teacher is not allowed "
                             "(kd_weight and hidden_weight must be 0)")
        super().__post_init__()
        if not isinstance(self.rungs, int) or not 1 <= self.rungs <= self.steps:
            raise ValueError(f"rungs must be an integer in 1..steps ({self.steps}), got {self.rungs!r}")

    @classmethod
    def for_tokens(cls, tokens: int, *, seq_len: int, batch_size: int, lr: float, warmup: float, rungs: int = 1,
                   world_size: int = 1, **kwargs) -> "ScratchSchedule":
        """Optimizer steps for a budget of `tokens` training tokens (all ranks together), warm-up as a
        fraction of the steps, and one report per 1/rungs of them (the ASHA rungs)."""
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
            raise ValueError(f"the token budget must be a positive integer, got {tokens!r}")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"warm-up is a fraction of the steps in [0, 1), got {warmup!r}")
        per_step = seq_len * batch_size * kwargs.get("gradient_accumulation", 1) * world_size
        steps = max(1, math.ceil(tokens / per_step))
        if steps < rungs:
            raise ValueError(f"{tokens} tokens make {steps} optimizer steps of {per_step} tokens, fewer than the "
                             f"{rungs} fidelity rungs; raise the token budget")
        return cls(steps=steps, lr=lr, warmup_steps=int(warmup * steps), seq_len=seq_len, batch_size=batch_size,
                   report_every=math.ceil(steps / rungs), tokens=tokens, rungs=rungs, **kwargs)

    def report_steps(self) -> list[int]:
        """Exactly `rungs` distinct steps, the last one the final step."""
        return [math.ceil(k * self.steps / self.rungs) for k in range(1, self.rungs + 1)]

    def tokens_per_step(self, world_size: int = 1) -> int:
        return self.seq_len * self.batch_size * self.gradient_accumulation * world_size


# ---- data -----------------------------------------------------------------------------------------
def _hub_documents(name: str, *, rank: int, world: int, seed: int):
    """Endless documents of an allowed source from the hub (a new pass after each epoch)."""
    check_source(name)
    try:
        import datasets
        repo, config = HUB_IDS[name]
        stream = datasets.load_dataset(repo, config, split="train", streaming=True)
    except Exception as err:   # offline, or hub unreachable: one line saying what to do instead
        raise ValueError(f"could not stream {name} from the Hugging Face hub ({type(err).__name__}); train on the "
                         "bundled sample (train.hub: false) or run on a connected machine") from None
    heldout = set(texts(name, split="heldout"))
    epoch = 0
    while True:
        rows = stream.shuffle(seed=seed + epoch, buffer_size=STREAM_SHUFFLE_BUFFER) if hasattr(stream, "shuffle") \
            else stream
        for i, row in enumerate(rows):
            if i % world != rank:          # each rank its own documents
                continue
            text = row_text(row)
            if text and text not in heldout and not hub_heldout(name, text):
                yield text
        epoch += 1


class StreamMixer:
    """BlockMixer's interface over endless hub streams: packed blocks of seq_len, sources mixed by weight."""

    def __init__(self, tokenizer, mix: dict, *, seq_len: int, seed: int, rank: int = 0, world: int = 1,
                 documents=_hub_documents):
        self.weights = check_mix(mix)
        self.names = list(self.weights)
        self.seq_len, self.bos = seq_len, tokenizer.bos_token_id
        self.tokenizer = tokenizer
        self._docs = {n: documents(n, rank=rank, world=world, seed=seed) for n in self.names}
        self._buffers = {n: [] for n in self.names}
        self._probs = torch.tensor([self.weights[n] for n in self.names])
        self._rng = torch.Generator().manual_seed(int(seed))

    def _block(self, name: str) -> torch.Tensor:
        buf = self._buffers[name]
        while len(buf) < self.seq_len:
            doc = next(self._docs[name])
            buf.extend(([self.bos] if self.bos is not None else []) +
                       self.tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"])
        block, self._buffers[name] = buf[:self.seq_len], buf[self.seq_len:]
        return torch.tensor(block)

    def batch(self, batch_size: int) -> torch.Tensor:
        picks = torch.multinomial(self._probs, batch_size, replacement=True, generator=self._rng)
        return torch.stack([self._block(self.names[i]) for i in picks.tolist()])


# ---- training ---------------------------------------------------------------------------------------
def train_scratch(model, tokenizer, schedule: ScratchSchedule, *, on_report=None, available_bytes: int | None = None):
    """Train `model` in place; return (the model in fp32 on CPU, eval mode; history of reports).

    on_report(step, metrics) runs after each 1/rungs of the optimizer steps (the last call at the last step), on rank 0
    (on every rank under multi-rank ZeRO-3), with step, tokens (seen so far, all ranks), loss (mean since the last
    report), lr and seconds; the model is in eval mode meanwhile. Rank 0 returning True stops every rank there."""
    if not isinstance(schedule, ScratchSchedule):
        raise ValueError("train_scratch takes a ScratchSchedule (LM loss only; no teacher in Track 2)")
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = schedule.resolved_precision(device_type)
    if precision == "fp16" and device_type == "cpu":
        raise ValueError("precision fp16 is not supported by DeepSpeed's CPU accelerator; use fp32 or bf16")
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    cfg = model.config
    estimate = estimate_training_memory(sum(p.numel() for p in model.parameters()), 0, zero_stage=schedule.zero_stage,
                                        gpus=world, precision=precision, seq_len=schedule.seq_len,
                                        batch_size=schedule.batch_size, hidden=cfg.hidden_size,
                                        layers=cfg.num_hidden_layers, vocab=cfg.vocab_size)
    try:
        check_fits(estimate, available_memory(device_type) if available_bytes is None else available_bytes)
    except ValueError as err:
        raise ValueError(str(err).replace("distillation needs", "training needs", 1)) from None
    if schedule.hub:
        data = StreamMixer(tokenizer, schedule.mix, seq_len=schedule.seq_len, seed=schedule.seed, rank=rank, world=world)
    else:   # data parallel: each rank draws its own rows
        data = BlockMixer(tokenizer, schedule.mix, seq_len=schedule.seq_len, seed=schedule.seed + rank)
    torch.manual_seed(schedule.seed)
    with _process_group(device_type) as (rank, world), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*reduce_scatter_tensor.*")  # ZeRO-3 on torch 2.13, harmless
        warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*")
        return _train(model, schedule, precision, data, on_report, device_type, rank, world)


def _train(model, schedule, precision, data, on_report, device_type, rank, world):
    import deepspeed
    device = torch.device(device_type, int(os.environ.get("LOCAL_RANK", "0"))) if device_type == "cuda" else \
        torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    if precision == "fp32":
        model.float()                 # DeepSpeed trains the module's own dtype when no 16-bit mode is on
    model.to(device)                  # 16-bit modes: DeepSpeed casts it and keeps FP32 masters itself
    model.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.lr_at(0), weight_decay=schedule.weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=_ds_config(schedule, precision))
    history, loss_sum, since, tokens, start = [], 0.0, 0, 0, time.perf_counter()
    report_at = set(schedule.report_steps())
    for step in range(1, schedule.steps + 1):
        lr = schedule.lr_at(step - 1)
        for group in engine.optimizer.param_groups:   # ZeRO wrappers share the client's param groups
            group["lr"] = lr
        for _ in range(schedule.gradient_accumulation):
            ids = data.batch(schedule.batch_size).to(device)
            loss = lm_loss(engine(input_ids=ids, use_cache=False).logits, ids)
            engine.backward(loss)
            engine.step()
            loss_sum += loss.item() / schedule.gradient_accumulation
        since += 1
        tokens += schedule.tokens_per_step(world)
        if step not in report_at:
            continue
        metrics = {"step": step, "tokens": tokens, "loss": loss_sum / since, "lr": lr,
                   "seconds": round(time.perf_counter() - start, 3)}
        history.append(metrics)
        loss_sum, since = 0.0, 0
        engine.eval()
        # ZeRO-3 partitions the weights, so every forward is a collective: then every rank calls on_report
        # (and must run the same forwards); otherwise rank 0 alone. Rank 0 decides (as compress.distill).
        collective = engine.zero_optimization_stage() == 3 and world > 1
        stop = bool(on_report(step, dict(metrics))) if (on_report is not None and (rank == 0 or collective)) \
            else False
        engine.train()
        if _agree(stop, world, device):
            break
    return _finish(engine, model), history
