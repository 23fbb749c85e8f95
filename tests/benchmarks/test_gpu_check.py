"""``benchmarks/gpu.py --smoke``: the GPU check's code paths on CPU (kernel in the interpreter), so the
script a GPU session runs cannot rot between sessions."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_gpu_check_smoke(tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    env.pop('TRITON_INTERPRET', None)  # the script sets it itself for --smoke
    child = subprocess.run([sys.executable, '-m', 'benchmarks.gpu', '--smoke', '--out', str(tmp_path)],
                           cwd=ROOT, env=env, capture_output=True, text=True)
    assert child.returncode == 0, child.stdout[-5000:] + child.stderr[-5000:]

    correctness = read(tmp_path / 'correctness.csv')
    assert len(correctness) > 10 and all(r['ok'] == 'True' for r in correctness)
    assert {r['dtype'] for r in correctness} >= {'float32', 'bfloat16'}
    assert {r['in_place'] for r in correctness if r.get('in_place')} == {'True', 'False'}  # both forms checked

    speed = read(tmp_path / 'kernel_speed.csv')
    assert {r['impl'] for r in speed} == {'copy', 'timm_eva', 'plain_compiled', 'triton', 'triton_in_place',
                                         'triton_fwd_bwd', 'plain_compiled_fwd_bwd'}
    assert all(float(r['median_ms']) > 0 for r in speed)

    thesis = read(tmp_path / 'thesis.csv')
    assert {(r['model'], r['phase']) for r in thesis} >= {('vit_tiny_rope_axial', 'train'), ('swin_tiny_rpb', 'infer')}
    for row in thesis:
        assert row['sdpa_backend'] in ('flash', 'efficient', 'cudnn', 'math'), row
        if 'rope' in row['model']:  # no mask: the fused kernel, on CPU too
            assert row['sdpa_backend'] == 'flash', row
    assert read(tmp_path / 'autotune.csv')
    assert (tmp_path / 'env.json').exists()


def test_a_group_that_raises_costs_its_own_rows_only(tmp_path, monkeypatch):
    """A one-shot device session keeps every figure but the failed one."""
    from benchmarks import gpu
    tiny = dict(depth=1, embed_dim=32, num_heads=2)
    broken = ('vit_tiny', ['vit_tiny_ape', 'vit_tiny_no_such_encoding'], 32, 2, 2, tiny)
    working = ('vit_tiny', ['vit_tiny_ape', 'vit_tiny_rope_axial'], 48, 2, 2, tiny)
    monkeypatch.setattr(gpu, 'thesis_groups', lambda smoke: [broken, working])
    monkeypatch.setattr(gpu, 'ERRORS', [])
    rows = gpu.thesis(torch.device('cpu'), True, tmp_path, budget_s=1e9)
    failed, measured = rows[:4], rows[4:]
    assert all('no_such_encoding' in r['skipped'] for r in failed)
    assert [(r['model'], r['phase']) for r in measured] == [
        (m, p) for p in ('infer', 'train') for m in ('vit_tiny_ape', 'vit_tiny_rope_axial')]
    assert all(r['samples_per_sec'] > 0 and 'skipped' not in r for r in measured)
    assert len(gpu.ERRORS) == 1 and 'Traceback' in gpu.ERRORS[0]
    assert len(read(tmp_path / 'thesis.csv')) == 8


def test_full_correctness_section_covers_every_pair_in_few_kernel_compiles(monkeypatch):
    """On a GPU each new kernel specialization (constexprs, config, dtypes, and which integers are 1 or divisible by
    16, which pointers are 16-byte aligned) is a compile of about a second: the full correctness section must
    meet every pair of its factors' values in under a hundred of them (the product of its factors took about 590).
    Launches are recorded here, not run."""
    import triton.runtime.autotuner
    from benchmarks import gpu

    def specialization(value):
        if isinstance(value, bool) or not isinstance(value, (int, torch.Tensor)):
            return value
        if isinstance(value, int):
            return value == 1, value % 16 == 0, value >= 2 ** 31
        return value.dtype, value.data_ptr() % 16 == 0

    compiles = set()

    def record(self, *args, grid, warmup, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        # one config where the check pins it; autotuned, every config that survives pruning is compiled to time
        configs = self.configs if len(self.configs) == 1 else self.prune_configs(kwargs)
        for config in configs:
            compiles.add((self.base_fn.__name__, str(config), tuple(map(specialization, [*args, *kwargs.values()]))))

    monkeypatch.setattr(triton.runtime.autotuner.Autotuner, 'run', record)
    monkeypatch.setenv('TRITON_INTERPRET', '1')  # lets apply_rope take CPU tensors to the (recording) launcher
    cases = gpu.correctness_cases(smoke=False)
    for case in cases:
        gpu.run_case(case, torch.device('cpu'))

    factors = gpu.correctness_factors(smoke=False)
    names = list(factors)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            met = {(case[a], case[b]) for case in cases}
            assert met >= {(va, vb) for va in factors[a] for vb in factors[b]}, (a, b)
    assert len(cases) < 50 and len(compiles) < 100, (len(cases), len(compiles))
