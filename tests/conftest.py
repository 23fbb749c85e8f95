"""Shared test configuration. Where the Triton kernel tests run (see tests/ops/test_rope_triton.py): in this process when it has
interpreted kernels or a GPU, otherwise in a child interpreter process; the tests of Triton's compiler wherever the
kernels are not interpreted. The tests that do not run here are deselected, not skipped, so a report never counts a
kernel test that did not run."""
import os

import pytest
import torch


def kernels_interpreted() -> bool:
    if os.environ.get('TRITON_INTERPRET') != '1':
        return False
    from triton.runtime.interpreter import InterpretedFunction
    from timm_pe.ops import rope_triton
    kernel = rope_triton._rope_fwd_kernel
    while not isinstance(kernel, InterpretedFunction) and hasattr(kernel, 'fn'):  # through the autotuner
        kernel = kernel.fn
    return isinstance(kernel, InterpretedFunction)


def pytest_collection_modifyitems(config, items):
    interpreted = kernels_interpreted()
    # the kernel tests run here with a GPU or the interpreter, else in a child interpreter process; the
    # compiler's tests need compiled (not interpreted) kernels
    unwanted = {'kernel_runner' if torch.cuda.is_available() or interpreted else 'triton_kernel'}
    if interpreted:
        unwanted.add('triton_compiler')
    keep = [not any(item.get_closest_marker(m) for m in unwanted) for item in items]
    if not all(keep):
        config.hook.pytest_deselected(items=[item for item, k in zip(items, keep) if not k])
        items[:] = [item for item, k in zip(items, keep) if k]


@pytest.fixture(scope='module')
def one_thread():
    """For modules of tiny models: on a shared CPU, intra-op threads cost more in waiting than they gain."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
