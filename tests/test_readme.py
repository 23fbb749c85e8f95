"""The README's model tables list exactly what is registered, described by the encoding registry; its
whole-model cost table is the committed benchmark CSV."""
import re
from pathlib import Path

from timm_pe.layers import ENCODINGS
from timm_pe.models.swin import ATTN_POS as SWIN_ENCODINGS
from timm_pe.models.vit import VARIANTS as VIT_VARIANTS

README = Path(__file__).resolve().parents[1] / 'README.md'


def defaults(name: str, family: str) -> str:
    options = ENCODINGS[name].options if name in ENCODINGS else {}
    return ', '.join(f'`{option}={per_family[family]!r}`' for option, per_family in options.items()) or '-'


def vit_row(variant: str) -> str:
    args = VIT_VARIANTS[variant]
    attn = args.get('attn_pos')
    if attn is None:
        name = {'learn': 'ape', 'sincos': 'sincos'}.get(args['abs_pos'])
        kind, info = (ENCODINGS[name].kind, ENCODINGS[name].title) if name else ('-', 'none')
    else:
        kind, info = ENCODINGS[attn].kind, ENCODINGS[attn].title
        if args['abs_pos'] == 'learn':
            info += ', plus the learned absolute embedding'
    return f'| `vit_{{size}}_{variant}` | {kind} | {info} | {defaults(attn, "vit") if attn else "-"} |'


def swin_row(name: str) -> str:
    encoding = ENCODINGS[name]
    return f'| `swin_{{size}}_{name}` | {encoding.kind} | {encoding.title} | {defaults(name, "swin")} |'


def readme_rows(prefix: str):
    return [line for line in README.read_text().splitlines() if re.match(rf'\| `{prefix}_\{{size\}}_', line)]


def test_vit_table_is_the_registry():
    expected = [vit_row(v) for v in VIT_VARIANTS]
    assert readme_rows('vit') == expected, 'README ViT table out of date; expected rows:\n' + '\n'.join(expected)


def test_swin_table_is_the_registry():
    expected = [swin_row(e) for e in SWIN_ENCODINGS]
    assert readme_rows('swin') == expected, 'README Swin table out of date; expected rows:\n' + '\n'.join(expected)


def test_whole_model_cost_table_quotes_the_committed_bench_csv():
    """Each row of the README's whole-model table is that model's row of results/bench_models/bench.csv."""
    import csv

    from benchmarks.models import PEERS
    with open(README.parent / 'results' / 'bench_models' / 'bench.csv') as f:
        rows = {r['model']: r for r in csv.DictReader(f)}
    text = README.read_text()
    block = text[text.index('<!-- bench-models-table -->'):text.index('<!-- /bench-models-table -->')]
    lines = [line for line in block.splitlines() if line.startswith('| ') and '`' in line]
    expected = []
    for name, row in rows.items():
        label = f'timm `{name}`' if name in PEERS else f'`{name}`'
        expected.append(f"| {label} | {float(row['infer_samples_per_sec_vs_ape']):.2f} | "
                        f"{float(row['train_samples_per_sec_vs_ape']):.2f} | {float(row['train_saved_mb']):.0f} |")
    assert lines == expected, 'README whole-model table out of date; expected rows:\n' + '\n'.join(expected)
