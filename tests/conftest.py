"""Shared test configuration. Where the Triton kernel tests run (see tests/ops/test_rope_triton.py): in this process when it has
interpreted kernels or a GPU, otherwise in a child interpreter process. The tests that do not run
here are deselected, not skipped, so a report never counts a kernel test that did not run."""
import os

import pytest
import torch


def kernels_run_here() -> bool:
    if torch.cuda.is_available():
        return True
    if os.environ.get('TRITON_INTERPRET') != '1':
        return False
    from triton.runtime.interpreter import InterpretedFunction
    from timm_pe.ops import rope_triton
    kernel = rope_triton._rope_fwd_kernel
    while not isinstance(kernel, InterpretedFunction) and hasattr(kernel, 'fn'):  # through the autotuner
        kernel = kernel.fn
    return isinstance(kernel, InterpretedFunction)


def pytest_collection_modifyitems(config, items):
    unwanted = 'kernel_runner' if kernels_run_here() else 'triton_kernel'
    deselected = [item for item in items if item.get_closest_marker(unwanted)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker(unwanted)]


@pytest.fixture(scope='module')
def one_thread():
    """For modules of tiny models: on a shared CPU, intra-op threads cost more in waiting than they gain."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
