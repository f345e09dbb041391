"""Timing for the benchmark scripts: the variants of one comparison measured in turn, in one run, so
that load from other processes on the machine falls on every variant alike.

    from timing import interleaved
    seconds = interleaved({"ours": ours_step, "bare": bare_step}, repeats=20, warmup=2)
    ratio = statistics.median(seconds["ours"]) / statistics.median(seconds["bare"])
"""

import time
from typing import Callable, Dict, List, Optional

import torch
from tqdm.auto import tqdm


def synchronize(device=None) -> None:
    """Waits for queued CUDA work, so that a timer measures the computation and not only its launch."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(call: Callable[[], object], device=None) -> float:
    """Wall seconds of one `call()` (on `device`, if CUDA, until its work is done)."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(
    calls: Dict[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: int = 1,
    device=None,
    settle_s: float = 0.0,
    desc: Optional[str] = None,
) -> Dict[str, List[float]]:
    """name -> wall seconds of `repeats` calls of each variant, one call of each per round.

    `warmup` untimed calls of each come first. The order rotates every round, so no variant always
    runs right after the same one. `settle_s` sleeps before each timed call: OpenMP worker threads
    spin for a while after parallel work, and the next variant should not pay for them. `desc`
    shows a progress bar under that name.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    names = list(calls)
    seconds = {name: [] for name in names}
    for round_index in tqdm(range(repeats), desc=desc, unit="round", disable=desc is None):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if settle_s:
                time.sleep(settle_s)
            seconds[name].append(time_call(calls[name], device))
    return seconds
