"""``benchmarks/overhead.py``: on tiny models, the rows it writes and the attention time it attributes; and the
README's overhead table against the committed CSVs."""
import csv
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

import timm_pe  # noqa: F401
from benchmarks.overhead import attention_time, main

ROOT = Path(__file__).resolve().parents[2]


def test_attention_time_is_one_part_of_each_forward():
    model = timm.create_model('vit_tiny_rope_axial', depth=2, img_size=32).eval()
    spent = attention_time(model, time.perf_counter)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            model(x)
            assert 0 < spent[-1] < time.perf_counter() - start
    assert len(spent) == 3


def test_overhead_rows_ratios_and_attention_excess(tmp_path):
    out = tmp_path / 'overhead.csv'
    main(['--models', 'vit_tiny_ape', 'vit_tiny_rope_axial', '--model-kwargs', 'depth=1', '--sizes', '32',
          '--reps', '2', '--warmup', '1', '--batch-size', '2', '--allocator', 'system', '--op-steps', '1',
          '--csv', str(out)])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [(r['phase'], r['model']) for r in rows] == [
        (phase, model) for phase in ('infer', 'train') for model in ('vit_tiny_ape', 'vit_tiny_rope_axial')]
    for r in rows:
        assert float(r['attention_ms']) > 0 and int(r['reps']) == 2
        assert r['allocator'] == 'system' and int(r['minor_faults']) >= 0
        if r['model'] == 'vit_tiny_ape':
            assert float(r['vs_baseline']) == 1 and float(r['attention_excess']) == 0
    with open(tmp_path / 'overhead_ops.csv') as f:
        ops = list(csv.DictReader(f))
    for phase in ('infer', 'train'):
        by_model = {m: {r['op'] for r in ops if r['phase'] == phase and r['model'] == m}
                    for m in ('vit_tiny_ape', 'vit_tiny_rope_axial')}
        assert all('aten::addmm' in names for names in by_model.values())
        assert by_model['vit_tiny_rope_axial'] - by_model['vit_tiny_ape']  # the rotation's own ops


def test_reparam_and_twin_time_their_copies_in_the_same_rounds(tmp_path):
    out = tmp_path / 'overhead.csv'
    main(['--models', 'vit_tiny_ape', 'vit_tiny_rope_mixed', '--model-kwargs', 'depth=1', '--sizes', '32',
          '--reps', '2', '--warmup', '0', '--batch-size', '8', '--phases', 'infer', '--op-steps', '0', '--reparam',
          '--twin', '--csv', str(out)])
    with open(out) as f:
        assert [r['model'] for r in csv.DictReader(f)] == ['vit_tiny_ape', 'vit_tiny_rope_mixed',
                                                          'vit_tiny_rope_mixed+reparam', 'vit_tiny_ape#2']


_FAULTS_OF_A_REUSED_BLOCK = """
import sys, torch
from timm_pe.tools.timing import keep_freed_memory, minor_faults
if sys.argv[1] == 'steady':
    assert keep_freed_memory()
counts = []
for _ in range(5):
    before = minor_faults()
    torch.ones(1 << 24)  # 64 MiB, freed at once
    counts.append(minor_faults() - before)
print(counts[-1])
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason="mallopt is glibc's")
def test_steady_allocator_takes_no_page_faults_for_memory_it_reuses():
    """Run in a child: the setting lasts for the process. A 64 MiB block is mapped afresh on every allocation by
    default (16,384 pages to fault in); with freed memory kept, later allocations reuse its pages."""
    faults = {mode: int(subprocess.run([sys.executable, '-c', _FAULTS_OF_A_REUSED_BLOCK, mode], cwd=ROOT, check=True,
                                       capture_output=True, text=True).stdout)
              for mode in ('system', 'steady')}
    assert faults['system'] > 10_000 and faults['steady'] < 1_000, faults


def _cells(rows, phase, column, fmt, baseline=False):
    """The CSV's values of one column, in its model order, joined by ' / ' (the baseline's first, or left out)."""
    values = [float(r[column]) for r in rows if r['phase'] == phase]
    return ' / '.join(fmt(v) for v in (values if baseline else values[1:]))


def test_readme_overhead_table_quotes_the_committed_csvs():
    """Each row of the README's overhead table names its CSV; its cells are that CSV's ratios, attention excess
    and page faults (of the inference rows where it has them, else the training rows)."""
    text = (ROOT / 'README.md').read_text()
    block = text[text.index('<!-- overhead-table -->'):text.index('<!-- /overhead-table -->')]
    lines = [line for line in block.splitlines() if line.startswith('| ') and '`results/' in line]
    assert lines
    for line in lines:
        path = re.search(r'`(results/[^`]+\.csv)`', line).group(1)
        with open(ROOT / path) as f:
            rows = list(csv.DictReader(f))
        cells = []
        for phase in ('infer', 'train'):
            if not any(r['phase'] == phase for r in rows):
                cells.append('')
                continue
            cells.append(f"{_cells(rows, phase, 'vs_baseline', '{:.3f}'.format)} "
                         f"({_cells(rows, phase, 'vs_baseline_paired', '{:.3f}'.format)})")
        phase = 'infer' if any(r['phase'] == 'infer' for r in rows) else 'train'
        cells.append(_cells(rows, phase, 'attention_excess', lambda v: f'{100 * v:.1f}%'))
        cells.append(_cells(rows, phase, 'minor_faults', lambda v: f'{v:,.0f}', baseline=True))
        assert [c.strip() for c in line.split('|')[2:-1]] == cells, (path, line)
