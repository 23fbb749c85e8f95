"""Regenerate the committed model cards, one per registered tag (with weights or not published yet): ``python model_cards/generate.py``.

Each card is rendered from the package template by ``timm_pe.publish.render_card`` on a meta-device model (no weights
needed); the metrics are the published numbers in reported_top1.csv until measured ones replace them.
"""
import sys
from pathlib import Path

import torch
import timm

CARDS = Path(__file__).resolve().parent
sys.path.insert(0, str(CARDS.parent))

from timm_pe.publish import read_metrics, registered_tags, render_card  # noqa: E402
from timm_pe.models._pretrained import HUB_ORG  # noqa: E402


def card_text(name: str) -> str:
    with torch.device('meta'):
        model = timm.create_model(name)
    repo_id = f'{HUB_ORG}/{name}' if name.endswith('.in100') else None
    metrics = [r for r in read_metrics(CARDS / 'reported_top1.csv') if r['model'] == name]
    return render_card(model, name, repo_id, metrics)


def main() -> None:
    for name in registered_tags():
        (CARDS / f'{name}.md').write_text(card_text(name))
        print(f'model_cards/{name}.md')


if __name__ == '__main__':
    main()
