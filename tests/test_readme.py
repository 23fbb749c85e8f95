"""The README's model tables list exactly what is registered, described by the encoding registry."""
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
