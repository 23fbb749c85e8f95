"""``benchmarks/overhead.py``: on tiny models, the rows it writes and the attention time it attributes; and the
README's overhead table against the committed CSVs."""
import csv
import re
import time
from pathlib import Path

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
          '--reps', '2', '--warmup', '1', '--batch-size', '2', '--csv', str(out)])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [(r['phase'], r['model']) for r in rows] == [
        (phase, model) for phase in ('infer', 'train') for model in ('vit_tiny_ape', 'vit_tiny_rope_axial')]
    for r in rows:
        assert float(r['attention_ms']) > 0 and int(r['reps']) == 2
        if r['model'] == 'vit_tiny_ape':
            assert float(r['vs_baseline']) == 1 and float(r['attention_excess']) == 0


def _cells(rows, phase, column, fmt):
    by_model = {r['model']: float(r[column]) for r in rows if r['phase'] == phase}
    return ' / '.join(fmt(by_model[m]) for m in ('vit_small_rope_axial', 'vit_small_rope_mixed'))


def test_readme_overhead_table_quotes_the_committed_csvs():
    """Each row of the README's overhead table names its CSV; its cells are that CSV's ratios."""
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
        cells.append(_cells(rows, 'infer', 'attention_excess', lambda v: f'{100 * v:.1f}%'))
        assert [c.strip() for c in line.split('|')[2:-1]] == cells, (path, line)
