"""Regenerate the committed model cards, one per registered pretrained tag: ``python model_cards/generate.py``.

Each card is rendered from the package template by ``timm_pe.publish.render_card`` on a meta-device model (no weights
needed); the metrics are the published numbers in reported_top1.csv until measured ones replace them.
"""
import sys
from pathlib import Path

import torch
import timm

CARDS = Path(__file__).resolve().parent
sys.path.insert(0, str(CARDS.parent))

from timm_pe.publish import read_metrics, registered_models, render_card  # noqa: E402
from timm_pe.models._pretrained import HUB_ORG  # noqa: E402


def card_text(name: str) -> str:
    with torch.device('meta'):
        model = timm.create_model(name)
    hub_id = model.pretrained_cfg['hf_hub_id']
    repo_id = hub_id if hub_id.startswith(f'{HUB_ORG}/') else None
    metrics = [r for r in read_metrics(CARDS / 'reported_top1.csv') if r['model'] == name]
    return render_card(model, name, repo_id, metrics)


def main() -> None:
    for name in registered_models(pretrained=True):
        (CARDS / f'{name}.md').write_text(card_text(name))
        print(f'model_cards/{name}.md')


if __name__ == '__main__':
    main()
