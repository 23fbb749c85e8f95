"""timm-pe bench: CSV rows in timm benchmark.py's columns, the ratio to the APE baseline, the plots."""
import csv
import importlib.util
import time

import pytest
import torch

import timm_pe  # noqa: F401
from timm_pe.bench import ape_baseline, peak_memory_mb
from timm_pe.cli import main


def test_ape_baseline():
    assert ape_baseline('vit_small_rope_mixed') == 'vit_small_ape'
    assert ape_baseline('vit_tiny_ape') == 'vit_tiny_ape'
    assert ape_baseline('resnet50') is None


def test_bench_cli_rows_and_ratio(tmp_path):
    out = tmp_path / 'bench'
    assert main(['bench', 'vit_tiny_rope_axial', 'vit_tiny_alibi2d', '--sizes', '32,64', '--train',
                 '--model-kwargs', 'depth=1', 'embed_dim=32', 'num_heads=2', 'patch_size=16',
                 '--batch-size', '2', '--warmup', '0', '--iters', '1', '--threads', '1',
                 '--output-dir', str(out)]) == 0
    with open(out / 'bench.csv') as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames, list(reader)
    for column in ('model', 'infer_samples_per_sec', 'infer_step_time', 'infer_batch_size', 'infer_img_size',
                   'param_count', 'train_samples_per_sec', 'train_step_time', 'train_batch_size', 'train_img_size',
                   'infer_tokens', 'infer_peak_mem_mb', 'infer_samples_per_sec_vs_ape', 'train_samples_per_sec_vs_ape'):
        assert column in columns
    # the APE baseline is added and comes first
    assert [(r['model'], r['infer_img_size']) for r in rows] == [
        (m, s) for m in ('vit_tiny_ape', 'vit_tiny_rope_axial', 'vit_tiny_alibi2d') for s in ('32', '64')]
    by_key = {(r['model'], r['infer_img_size']): r for r in rows}
    for row in rows:
        assert int(row['infer_tokens']) == (int(row['infer_img_size']) // 16) ** 2 + 1
        assert float(row['infer_samples_per_sec']) > 0 and float(row['train_samples_per_sec']) > 0
        ape = by_key['vit_tiny_ape', row['infer_img_size']]
        for phase in ('infer', 'train'):
            expected = float(row[f'{phase}_samples_per_sec']) / float(ape[f'{phase}_samples_per_sec'])
            assert float(row[f'{phase}_samples_per_sec_vs_ape']) == pytest.approx(expected, rel=1e-2, abs=2e-3)
    assert {float(r['infer_samples_per_sec_vs_ape']) for r in rows if r['model'] == 'vit_tiny_ape'} == {1.}
    if importlib.util.find_spec('matplotlib'):
        assert (out / 'bench_infer.png').stat().st_size > 1000
        assert (out / 'bench_train.png').stat().st_size > 1000


def test_peak_memory_sees_a_large_temporary():
    # 64 MB held for 0.3 s: long enough for the resident-memory sampler to be scheduled on a busy machine
    def step():
        held = torch.ones(16 * 2 ** 20)
        time.sleep(.3)
        held.sum()

    peak = peak_memory_mb(step, torch.device('cpu'))
    if peak is None:
        pytest.skip('no /proc/self/statm: peak CPU memory is not measured on this platform')
    assert peak >= 48
