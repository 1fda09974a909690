"""The questions split among ray workers (--num-gpus-total over --num-gpus-per-model), each with its own model."""
from __future__ import annotations

import os

import torch

from prompt.cli import apply_threads
from prompt.evaluation.totals import MethodTotals


def answer_in_workers(args, questions, setup, answer):
    """`answer(args, share, setup)` -> (totals, {question id: why not answered}, seconds, label) on each of
    `args.workers` ray workers, a share of `questions` each (CPU workers share the cores; GPU workers get
    --num-gpus-per-model GPUs each); returns the workers' results merged, with the longest worker's seconds."""
    import ray

    workers = args.workers
    device = "cpu" if not torch.cuda.is_available() or str(args.device or "").lower() == "cpu" else "cuda"
    ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=True,
             ignore_reinit_error=True)
    try:
        if device == "cpu":  # CPU workers share the cores
            remote = ray.remote(num_cpus=1)(_answer_share)
            threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
        else:
            remote = ray.remote(num_gpus=args.num_gpus_per_model)(_answer_share)
            threads = args.threads
        share = -(-len(questions) // workers)
        handles = [remote.remote(args, questions[i: i + share], setup, answer, threads)
                   for i in range(0, len(questions), share)]
        print(f"{len(handles)} ray workers ({device}), {share} questions each")
        results = ray.get(handles)
    finally:
        ray.shutdown()
    totals, failed, elapsed = MethodTotals(), {}, 0.0
    for worker_totals, worker_failed, worker_elapsed, label in results:
        totals.merge(worker_totals)
        failed.update(worker_failed)
        elapsed = max(elapsed, worker_elapsed)
    return totals, failed, elapsed, label


def _answer_share(args, questions, setup, answer, threads):
    """A ray worker's share: its own model, its rows appended to the shared answer file (one write per row)."""
    apply_threads(threads)
    args.answers = None
    return answer(args, questions, setup)
