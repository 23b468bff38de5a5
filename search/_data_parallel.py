"""A trial whose distillation runs data-parallel on several workers (GPUs) through Ray Train.

The Tune trial (search/_trial.run_trial) starts a `TorchTrainer` with `num_workers` = the experiment's
distillation workers (`ScalingConfig(use_gpu=True)`: one GPU each) and waits. Every worker runs the
same trial body as an in-process trial: prune the dense model with the trial's plan, load the frozen
16-bit teacher, distil with DeepSpeed ZeRO over the Train process group (Ray Train sets RANK /
WORLD_SIZE / LOCAL_RANK / MASTER_* and the process group; compress.distill uses them), and score the
student at every rung. Rank 0 sends each rung's scores up a queue; the trial calls `tune.report` with
them, so ASHA sees the rungs exactly as for an in-process trial, and sends back whether to go on.

Why not Ray's TuneReportCallback: when ASHA stops a trial, nothing tells the Train run, so its workers
keep their GPUs and the next trial's worker group times out waiting for them (measured here, Ray
2.60). With the acknowledgement, a stop reaches rank 0 as the answer to its report, distill() makes
every rank stop at the same step, and the Train run ends normally, releasing its workers.
"""
from __future__ import annotations

import threading

from search._trial import TrialSetup, trial_body

GO, STOP = "go", "stop"
_DONE = ("__done__",)          # sentinel: the Train run has ended (normally or not)


def scaling_for(setup: TrialSetup):
    from ray.train import ScalingConfig
    resources = {"CPU": setup.cpus_per_worker}
    if setup.use_gpu:
        resources["GPU"] = 1
    return ScalingConfig(num_workers=setup.distill_workers, use_gpu=setup.use_gpu, resources_per_worker=resources)


def run(params: dict, setup: TrialSetup, run_record, *, baseline: str, trial_id: str) -> None:
    """Run the trial on Ray Train workers, relaying rank 0's rung scores to Tune."""
    from ray import tune
    from ray.train import RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    up, down = Queue(actor_options={"num_cpus": 0}), Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        _worker, train_loop_config={"params": params, "setup": setup, "run": run_record, "baseline": baseline,
                                    "up": up, "down": down},
        scaling_config=scaling_for(setup), torch_config=TorchConfig(backend="nccl" if setup.use_gpu else "gloo"),
        run_config=RunConfig(name=f"distill-{trial_id}", storage_path=setup.train_storage))
    outcome: dict = {}

    def fit():
        try:
            trainer.fit()
        except BaseException as err:   # re-raised in the trial's thread below
            outcome["error"] = err
        finally:
            up.put(_DONE)

    thread = threading.Thread(target=fit, name=f"train-{trial_id}", daemon=True)
    thread.start()
    try:
        while True:
            scores = up.get()
            if scores == _DONE:
                break
            tune.report(scores)        # raises SystemExit(0) when the scheduler stops this trial
            down.put(GO)
    except SystemExit:
        down.put(STOP)                 # rank 0 stops every rank at this step; the Train run ends cleanly
        thread.join()
        raise
    thread.join()
    if "error" in outcome:
        raise RuntimeError(f"data-parallel distillation failed: {_first_line(outcome['error'])}") \
            from outcome["error"]


def _worker(config: dict) -> None:
    """One Ray Train worker: the whole trial body, reporting through rank 0."""
    import ray.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    up, down = config["up"], config["down"]

    def relay(scores: dict) -> bool:
        up.put(scores)
        return down.get() == STOP

    trial_body(config["params"], config["setup"], config["run"], baseline=config["baseline"], report=relay,
               rank=rank, world=world)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1][:500] if text else type(err).__name__
