"""Recovery training: knowledge distillation from the dense teacher into the pruned student, on DeepSpeed.

loss = kd_weight * KL_T(teacher || student) * T^2 + (1 - kd_weight) * LM cross-entropy
       + hidden_weight * MSE(student layer i, teacher layer layer_map[i])

Only the student is a DeepSpeed engine (client torch AdamW: no JIT-built optimizer); the teacher stays a
plain frozen nn.Module called under no_grad. One process: the 5 rendezvous variables are set here with a
free MASTER_PORT, and the process group is destroyed at the end with deepspeed.comm so the next call in
the same process (a reused Ray actor) can start again.

Several GPUs in one trial: start one process per GPU with the deepspeed launcher
(`deepspeed --num_gpus N script.py`), torchrun, or Ray Train's TorchTrainer
(ScalingConfig(num_workers=N, use_gpu=True), resources from the experiment config) and call distill()
in every process. Those launchers set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*; distill() then uses
them (and a process group the launcher already made) instead of its own, seeds each rank's data
differently, checks memory against world_size GPUs, and takes the early-stop decision from rank 0.
Only world_size 1 and 2-process CPU/gloo runs were tested here (no GPU node was available).
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, field

import torch

from ._distill_data import (DEFAULT_MIX, BlockMixer, LayerOutputs, check_mix, fidelity, heldout_blocks,
                            hidden_loss, kd_loss, lm_loss)
from ._families import family_of
from ._inputs import boolean, number

FULL_KD_VOCAB = 4096          # vocabularies up to this size use the full-vocabulary KL by default
AUTO_TOP_K = 256              # otherwise the teacher's top-k logits
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_STEPS = 10_000_000          # bounds a typo, not a schedule: the largest distillations here are thousands of steps
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
ACT_BYTES_PER_TOKEN_HIDDEN = 34   # per layer, 16-bit activations (Korthikanti et al. 2022, w/o attention scores)
LOGIT_COPIES = 4                  # fp32 student logits, their log-softmax and grad, teacher probabilities
RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True, kw_only=True)
class DistillSchedule:
    steps: int = 300
    lr: float = 1e-3
    warmup_steps: int = 20          # linear warm-up, then cosine down to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    temperature: float = 2.0
    kd_weight: float = 0.5          # KD vs LM cross-entropy mix
    hidden_weight: float = 0.0      # hidden-state matching, added on top
    top_k: int | None = None        # None: full KL when vocab <= 4096, else top-256; 0: always full
    seq_len: int = 128
    batch_size: int = 8             # per GPU / process, per micro step
    gradient_accumulation: int = 1
    mix: dict = field(default_factory=lambda: dict(DEFAULT_MIX))
    hub: bool = False               # stream C4 / Alpaca-zh with `datasets` instead of the bundled samples
    seed: int = 0
    report_every: int = 25          # fidelity steps: held-out KL / ppl and on_report
    heldout_blocks: int = 8
    zero_stage: int = 0
    precision: str = "auto"         # auto: bf16 on GPU, fp32 on CPU
    gradient_clipping: float = 1.0
    weight_decay: float = 0.0
    activation_checkpointing: bool = False   # recompute each layer in backward: activations ~ 1 / layers

    def __post_init__(self):
        object.__setattr__(self, "mix", check_mix(self.mix))  # refuses datasets the rules do not allow
        for name, most in (("steps", MAX_STEPS), ("seq_len", 2**20), ("batch_size", 2**16),
                           ("gradient_accumulation", 2**16), ("report_every", MAX_STEPS), ("heldout_blocks", 2**16)):
            number(getattr(self, name), name, integer=True, low=1, high=most, noun="a positive integer")
        number(self.warmup_steps, "warmup_steps", integer=True, low=0, high=MAX_STEPS)
        if isinstance(self.zero_stage, bool) or self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        if not isinstance(self.precision, str) or self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        number(self.kd_weight, "kd_weight", low=0, high=1)
        number(self.lr, "lr", low=0, low_open=True, high=1)
        number(self.temperature, "temperature", low=0, low_open=True, high=100)
        number(self.hidden_weight, "hidden_weight", low=0, high=1e6)
        number(self.min_lr_ratio, "min_lr_ratio", low=0, high=1)
        number(self.gradient_clipping, "gradient_clipping", low=0, high=1e6)
        number(self.weight_decay, "weight_decay", low=0, high=1e6)
        if self.top_k is not None:
            number(self.top_k, "top_k", integer=True, low=0, high=2**23)
        number(self.seed, "seed", integer=True, low=0, high=2**32 - 1)
        boolean(self.hub, "hub")
        boolean(self.activation_checkpointing, "activation_checkpointing")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def resolved_precision(self, device_type: str) -> str:
        if self.precision != "auto":
            return self.precision
        return "bf16" if device_type == "cuda" else "fp32"

    def resolved_top_k(self, vocab: int) -> int:
        if self.top_k is None:
            return 0 if vocab <= FULL_KD_VOCAB else AUTO_TOP_K
        return self.top_k


# ---- memory -------------------------------------------------------------------------------------
# Bytes per student parameter, as DeepSpeed 0.19 allocates them (engine._do_optimizer_sanity_check picks
# the wrapper): 16-bit training keeps the 16-bit weights and gradients the module computes with, FP32
# master weights, FP32 gradients for the master update and Adam's two FP32 moments; FP32 training keeps
# weights, gradients and moments. ZeRO 1 partitions the FP32 state (masters, their gradients, moments)
# over the GPUs, 2 also the 16-bit gradients, 3 also the 16-bit weights.
STATE_BYTES = {
    "16bit": {"weights": 2, "grads": 2, "master": 4, "master_grads": 4, "moments": 8},
    "fp32": {"weights": 4, "grads": 4, "master": 0, "master_grads": 0, "moments": 8},
}
PARTITIONED_FROM = {"master": 1, "master_grads": 1, "moments": 1, "grads": 2, "weights": 3}
CUDA_SLACK = 1 << 30          # allocator fragmentation and NCCL buffers next to the tensors


def teacher_dtype(precision: str, device_type: str) -> torch.dtype:
    """The frozen teacher is never FP32 on a GPU: BF16 (or FP16 when training in FP16) halves it."""
    if device_type != "cuda":
        return torch.float32               # CPU: BF16 matmuls are slower than FP32 there
    return torch.float16 if precision == "fp16" else torch.bfloat16


def estimate_training_memory(student_params: int, teacher_params: int, *, zero_stage: int, gpus: int,
                             precision: str, seq_len: int, batch_size: int, hidden: int, layers: int,
                             vocab: int, device_type: str = "cuda", checkpointing: bool = False) -> dict:
    """Bytes per device for distilling a `student_params` student from a frozen `teacher_params` teacher."""
    if precision not in BYTES:
        raise ValueError(f"precision must be one of {tuple(BYTES)}, got {precision!r}")
    if gpus < 1 or zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"need gpus >= 1 and zero_stage in 0-3, got gpus={gpus}, zero_stage={zero_stage}")
    table = STATE_BYTES["fp32" if precision == "fp32" else "16bit"]
    parts = {}
    for name, nbytes in table.items():
        share = gpus if zero_stage >= PARTITIONED_FROM[name] else 1
        parts[name] = student_params * nbytes / share
    width = BYTES[precision]
    tokens = seq_len * batch_size
    # with checkpointing only each layer's input is kept, plus one layer's activations while it is recomputed
    kept_layers = 2 / ACT_BYTES_PER_TOKEN_HIDDEN * layers + 1 if checkpointing else layers
    parts["activations"] = (kept_layers * tokens * hidden * ACT_BYTES_PER_TOKEN_HIDDEN * width / 2
                            + tokens * vocab * 4 * LOGIT_COPIES)
    parts["teacher"] = teacher_params * teacher_dtype(precision, device_type).itemsize
    parts["slack"] = CUDA_SLACK if device_type == "cuda" else 0
    parts = {k: int(v) for k, v in parts.items()}
    return {**parts, "total": sum(parts.values()), "zero_stage": zero_stage, "gpus": gpus, "precision": precision}


def estimate_for_shapes(student, teacher, schedule: "DistillSchedule", *, gpus: int, device_type: str) -> dict:
    """The estimate from compress.ModelShapes alone: a trial checks it BEFORE loading anything."""
    return estimate_training_memory(
        student.param_count(), teacher.param_count(), zero_stage=schedule.zero_stage, gpus=gpus,
        precision=schedule.resolved_precision(device_type), seq_len=schedule.seq_len,
        batch_size=schedule.batch_size, hidden=student.hidden_size, layers=student.num_layers,
        vocab=student.vocab_size, device_type=device_type, checkpointing=schedule.activation_checkpointing)


def check_fits(estimate: dict, available_bytes: int) -> None:
    if estimate["total"] <= available_bytes:
        return
    hint = "try zero_stage=3 or more GPUs" if estimate.get("zero_stage", 0) < 3 else \
        "try more GPUs or a smaller batch_size / seq_len"
    detail = ", ".join(f"{k} {_gb(v)}" for k, v in estimate.items()
                       if k not in ("total", "zero_stage", "gpus", "precision") and v)
    raise ValueError(f"distillation needs {_gb(estimate['total'])}, have {_gb(available_bytes)} per device; "
                     f"{hint} ({detail})")


def available_memory(device_type: str) -> int:
    """Free bytes on this process's device now (the CUDA context included, as allocations see it)."""
    if device_type == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    import psutil
    # processes of one host share its RAM
    return int(psutil.virtual_memory().available) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


# ---- process group ----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _without_shm_op() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce (deepspeed_shm_comm) into
    ~/.cache/torch_extensions at its first init_distributed. A build killed half-way (a timed-out trial, a
    SIGKILLed driver) leaves torch's lock file behind, and every later run waits on it forever; its kernels
    also hang peers on CPUs without AVX-512. DeepSpeed skips the op when it is marked incompatible, and gloo
    does the all-reduce instead: nothing is compiled at run time. Setting the table directly also skips
    DeepSpeed's probe of every op (compiler subprocesses, ~10 s per process); only build_shm_op reads it."""
    import deepspeed.ops
    vars(deepspeed.ops).setdefault("__compatible_ops__", {})["deepspeed_shm_comm"] = False


@contextlib.contextmanager
def _process_group(device_type: str):
    """Yield (rank, world_size); set up (and afterwards tear down) only what a launcher did not."""
    os.environ.setdefault("DS_ACCELERATOR", device_type)  # read once, at the first get_accelerator()
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    saved = {k: os.environ.get(k) for k in RENDEZVOUS_VARS}
    if not launched:  # without all five DS tries MPI discovery (needs mpi4py) or asserts on LOCAL_RANK
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))  # fresh port: concurrent trials must not collide
    import deepspeed
    _without_shm_op()
    owned = not torch.distributed.is_initialized()
    try:
        if owned:
            deepspeed.init_distributed(dist_backend="nccl" if device_type == "cuda" else "gloo")
        yield int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    finally:
        if owned and torch.distributed.is_initialized():
            # not torch's destroy: DS caches the world group, and the next initialize would fail on it
            deepspeed.comm.destroy_process_group()
        if not launched:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _ds_config(schedule: DistillSchedule, precision: str) -> dict:
    return {"train_micro_batch_size_per_gpu": schedule.batch_size,
            "gradient_accumulation_steps": schedule.gradient_accumulation,
            "gradient_clipping": schedule.gradient_clipping,
            "zero_optimization": {"stage": schedule.zero_stage},
            "bf16": {"enabled": precision == "bf16"},
            "fp16": {"enabled": precision == "fp16"},
            "steps_per_print": 10**9, "wall_clock_breakdown": False}


# ---- training -----------------------------------------------------------------------------------
def distill(student, teacher, tokenizer, schedule: DistillSchedule | None = None, *, layer_map=None,
            on_report=None, available_bytes: int | None = None):
    """Train `student` towards `teacher`; return (student in fp32 on CPU, eval mode; history of reports).

    on_report(step, metrics) is called every schedule.report_every optimizer steps (and at the last
    step) with step, loss, kd, ce, hidden (means since the previous report), lr, heldout_kl, heldout_ppl;
    returning True stops training there. available_bytes overrides the measured free memory."""
    schedule = schedule or DistillSchedule()
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = schedule.resolved_precision(device_type)
    if precision == "fp16" and device_type == "cpu":
        raise ValueError("precision fp16 is not supported by DeepSpeed's CPU accelerator; use fp32 or bf16")
    layer_map = _check_layer_map(student, teacher, layer_map, schedule.hidden_weight)
    gpus = int(os.environ.get("WORLD_SIZE", "1"))
    from ._shapes import shapes_from_config
    estimate = estimate_for_shapes(shapes_from_config(student.config), shapes_from_config(teacher.config), schedule,
                                   gpus=gpus, device_type=device_type)
    if available_bytes is None:   # what the two models already hold on the device is part of the estimate
        available_bytes = available_memory(device_type) + _resident_bytes(device_type, student, teacher)
    check_fits(estimate, available_bytes)
    rank_seed = schedule.seed + int(os.environ.get("RANK", "0"))  # data parallel: different rows per rank
    data = BlockMixer(tokenizer, schedule.mix, seq_len=schedule.seq_len, seed=rank_seed, hub=schedule.hub)
    heldout = heldout_blocks(tokenizer, seq_len=schedule.seq_len, count=schedule.heldout_blocks, hub=schedule.hub)
    torch.manual_seed(schedule.seed)
    with _process_group(device_type) as (rank, world), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*reduce_scatter_tensor.*")  # ZeRO-3 on torch 2.13, harmless
        warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*")
        return _train(student, teacher, schedule, precision, layer_map, data, heldout, on_report, device_type, rank, world)


def _resident_bytes(device_type: str, *models) -> int:
    return sum(p.numel() * p.element_size() for m in models for p in m.parameters() if p.device.type == device_type)


def _check_layer_map(student, teacher, layer_map, hidden_weight: float):
    if student.config.vocab_size != teacher.config.vocab_size:
        raise ValueError(f"student vocabulary ({student.config.vocab_size}) differs from the teacher's "
                         f"({teacher.config.vocab_size}); logit distillation needs the same tokenizer")
    n_student, n_teacher = student.config.num_hidden_layers, teacher.config.num_hidden_layers
    if layer_map is None:
        if hidden_weight > 0 and n_student != n_teacher:
            raise ValueError(f"hidden-state matching needs a layer_map: the student has {n_student} layers, "
                             f"the teacher {n_teacher} (read it from plan.json: realised.layer_map)")
        return list(range(n_student)) if n_student <= n_teacher else None
    layer_map = [int(i) for i in layer_map]
    if len(layer_map) != n_student or any(not 0 <= i < n_teacher for i in layer_map):
        raise ValueError(f"layer_map {layer_map} does not fit a {n_student}-layer student of a {n_teacher}-layer teacher")
    return layer_map


def _train(student, teacher, schedule, precision, layer_map, data, heldout, on_report, device_type, rank, world):
    import deepspeed
    device = torch.device(device_type, int(os.environ.get("LOCAL_RANK", "0"))) if device_type == "cuda" else \
        torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    teacher_state = (next(teacher.parameters()).device, next(teacher.parameters()).dtype)
    hooks = None
    try:
        teacher.eval().requires_grad_(False)
        teacher.to(device=device, dtype=teacher_dtype(precision, device_type))  # frozen, 16-bit on a GPU
        if precision == "fp32":
            student.float()                   # DeepSpeed trains the module's own dtype when no 16-bit mode is on
        student.to(device)                    # 16-bit modes: DeepSpeed casts it and keeps FP32 masters itself
        student.train().requires_grad_(True)  # pruning leaves every parameter frozen
        if schedule.activation_checkpointing:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer = torch.optim.AdamW(student.parameters(), lr=schedule.lr_at(0), weight_decay=schedule.weight_decay)
        engine, *_ = deepspeed.initialize(model=student, optimizer=optimizer, config=_ds_config(schedule, precision))
        if schedule.hidden_weight > 0:
            hooks = (LayerOutputs(family_of(student.config).layers(student)),
                     LayerOutputs(family_of(teacher.config).layers(teacher)))
        top_k = schedule.resolved_top_k(student.config.vocab_size)
        history, sums, since, start = [], {"loss": 0.0, "kd": 0.0, "ce": 0.0, "hidden": 0.0}, 0, time.perf_counter()
        for step in range(1, schedule.steps + 1):
            lr = schedule.lr_at(step - 1)
            for group in engine.optimizer.param_groups:  # ZeRO wrappers share the client's param groups
                group["lr"] = lr
            for _ in range(schedule.gradient_accumulation):
                ids = data.batch(schedule.batch_size).to(device)
                parts = _micro_step(engine, teacher, ids, schedule, top_k, layer_map, hooks)
                for key, value in parts.items():
                    sums[key] += value / schedule.gradient_accumulation
            since += 1
            if step % schedule.report_every and step != schedule.steps:
                continue
            _capture(hooks, False)
            engine.eval()
            metrics = {"step": step, **{k: v / since for k, v in sums.items()}, "lr": lr,
                       **fidelity(engine, teacher, heldout, device=device),
                       "seconds": round(time.perf_counter() - start, 3)}
            history.append(metrics)
            sums, since = dict.fromkeys(sums, 0.0), 0
            # on_report may run the student (a search trial scores it here): hooks stay off meanwhile.
            # ZeRO-3 partitions the student's weights, so every forward is a collective: then every rank
            # calls on_report (and must run the same forwards); otherwise rank 0 alone. Rank 0 decides.
            collective = engine.zero_optimization_stage() == 3 and world > 1
            stop = bool(on_report(step, dict(metrics))) if (on_report is not None and (rank == 0 or collective)) \
                else False
            engine.train()
            _capture(hooks, True)
            if _agree(stop, world, device):
                break
        return _finish(engine, student), history
    finally:
        if schedule.activation_checkpointing:
            student.gradient_checkpointing_disable()
        if hooks:
            for h in hooks:
                h.remove()
        teacher.to(device=teacher_state[0], dtype=teacher_state[1])


def _micro_step(engine, teacher, ids, schedule, top_k, layer_map, hooks) -> dict:
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, use_cache=False).logits
    t_states = hooks[1].take() if hooks else None
    s_logits = engine(input_ids=ids, use_cache=False).logits
    s_states = hooks[0].take() if hooks else None
    kd = kd_loss(s_logits, t_logits, temperature=schedule.temperature, top_k=top_k)
    ce = lm_loss(s_logits, ids)
    loss = schedule.kd_weight * kd + (1 - schedule.kd_weight) * ce
    hidden = hidden_loss(s_states, t_states, layer_map) if hooks else torch.zeros((), device=ids.device)
    if hooks:
        loss = loss + schedule.hidden_weight * hidden
    engine.backward(loss)
    engine.step()
    return {"loss": loss.item(), "kd": kd.item(), "ce": ce.item(), "hidden": hidden.item()}


def _capture(hooks, enabled: bool) -> None:
    for h in hooks or ():
        h.enabled = enabled


def _agree(stop: bool, world: int, device) -> bool:
    """All ranks must stop at the same step (or the others hang in the next all-reduce): rank 0 decides."""
    if world == 1:
        return stop
    flag = torch.tensor([1 if stop else 0], device=device)
    torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())


def _finish(engine, student):
    """The fp32 master weights (ZeRO keeps them in the optimizer; ZeRO-3 partitions the module's own
    tensors) written back into `student`, which is returned as a plain fp32 CPU module."""
    from deepspeed.utils import safe_get_full_fp32_param
    full = {}
    for name, p in student.named_parameters():
        value = safe_get_full_fp32_param(p) if engine.zero_optimization() or engine.bfloat16_enabled() else None
        full[name] = (value if value is not None else p.detach()).float().cpu().clone()
    engine.destroy()  # removes ZeRO-3's module hooks, so the module runs without the engine
    for name, p in student.named_parameters():
        p.data = full[name]
        p.requires_grad_(False)
    return student.float().cpu().eval()
