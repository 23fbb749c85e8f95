"""How the benchmarks time models: round-robin rounds, one model step as a closure, and a CPU heap that keeps
what it frees so that no step pays page faults for another's memory."""
import ctypes
import random
import resource
import time
from typing import Callable, Dict, List

import torch
from torch import nn


def interleaved_times(fns: Dict[str, Callable[[], object]], reps: int, warmup: int = 1,
                      sync: Callable[[], None] = lambda: None,
                      clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
    """Seconds per call of each function over ``reps`` rounds, one call of each per round, each round in its
    own (seeded) order, so that a load change on a shared machine hits all of them alike and no function
    always runs after the same other one."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    order, shuffle = list(fns), random.Random(0).shuffle
    for _ in range(reps):
        shuffle(order)
        for name in order:
            fn = fns[name]
            sync()
            start = clock()
            fn()
            sync()
            times[name].append(clock() - start)
    return times


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep every freed block in the process: no heap trimming, no separate mappings for
    large blocks. By default it hands large freed blocks back to the kernel, and the next step to allocate
    them faults every 4 KiB page back in, zero-filled; how many a step pays then depends on what the step
    before it left in the heap. False where the C library has no ``mallopt`` (or refuses), and nothing
    changes. The setting lasts for the process."""
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2 ** 31 - 1))


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def counting_faults(fn: Callable[[], object], counts: List[int]) -> Callable[[], None]:
    """``fn`` that appends to ``counts`` the page faults each call took."""
    def run():
        before = minor_faults()
        fn()
        counts.append(minor_faults() - before)
    return run


def model_steps(model: nn.Module, images: torch.Tensor, train: bool,
                autocast: Callable[[], object]) -> Callable[[], None]:
    """One inference forward, or one SGD training step (cross-entropy on random labels), as a closure; the
    model is put in eval or train mode now."""
    if not train:
        model.eval()

        @torch.no_grad()
        def infer():
            with autocast():
                model(images)
        return infer

    model.train()
    targets = torch.randint(0, model.num_classes, (images.shape[0],), device=images.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = nn.functional.cross_entropy(model(images).float(), targets)
        loss.backward()
        optimizer.step()
    return step
