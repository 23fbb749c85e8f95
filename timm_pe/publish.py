"""Publishing weights: :func:`export` writes a Hub-ready folder and :func:`push` uploads it (the
``timm-pe export`` and ``timm-pe push`` commands call them).

The folder is what ``timm.create_model('hf-hub:<repo>')`` and the registered ``.in100`` tags load: timm's own
``config.json`` (architecture, model_args, pretrained_cfg, written by ``timm.models.save_for_hf``),
``model.safetensors`` and a ``README.md`` model card rendered from the one template, shipped with the package
(``timm_pe/templates/model_card.md``).
"""
import csv
import json
from pathlib import Path
from string import Template
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import timm
import torch
from huggingface_hub import HfApi
from timm.layers import to_2tuple
from timm.models import get_pretrained_cfg, model_entrypoint, save_for_hf, split_model_name_tag
from timm.models._input import get_model_args

from . import __version__
from .layers import takes_rope_scaling
from .models._pretrained import WEIGHTS_FILE

DEFAULT_TEMPLATE = Path(__file__).resolve().parent / 'templates' / 'model_card.md'
# a source checkout has the training configs beside the package; an installed package does not
RECIPES_DIR = Path(__file__).resolve().parent.parent / 'recipes'
UPLOADED_FILES = ('config.json', WEIGHTS_FILE, 'README.md')
PAPER_TITLES = {
    'arXiv:2010.11929': 'An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale',
    'arXiv:2204.07118': 'DeiT III: Revenge of the ViT',
    'arXiv:2403.13298': 'Rotary Position Embedding for Vision Transformer',
    'arXiv:2311.00566': 'CROMA: Remote Sensing Representations with Contrastive Radar-Optical Masked Autoencoders',
    'arXiv:2108.12409': 'Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation',
    'arXiv:2103.14030': 'Swin Transformer: Hierarchical Vision Transformer using Shifted Windows',
}
# BibTeX per paper id; a card cites the papers of its encoding and weights, and timm
CITATIONS = {
    'arXiv:2010.11929': """@inproceedings{dosovitskiy2021vit,
  title={An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale},
  author={Dosovitskiy, Alexey and Beyer, Lucas and Kolesnikov, Alexander and Weissenborn, Dirk and Zhai, Xiaohua and Unterthiner, Thomas and Dehghani, Mostafa and Minderer, Matthias and Heigold, Georg and Gelly, Sylvain and Uszkoreit, Jakob and Houlsby, Neil},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2021}
}""",
    'arXiv:2204.07118': """@inproceedings{touvron2022deit3,
  title={DeiT III: Revenge of the ViT},
  author={Touvron, Hugo and Cord, Matthieu and J{\\'e}gou, Herv{\\'e}},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2022}
}""",
    'arXiv:2403.13298': """@inproceedings{heo2024rope,
  title={Rotary Position Embedding for Vision Transformer},
  author={Heo, Byeongho and Park, Song and Han, Dongyoon and Yun, Sangdoo},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2024}
}""",
    'arXiv:2311.00566': """@inproceedings{fuller2023croma,
  title={CROMA: Remote Sensing Representations with Contrastive Radar-Optical Masked Autoencoders},
  author={Fuller, Anthony and Millard, Koreen and Green, James R.},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2023}
}""",
    'arXiv:2108.12409': """@inproceedings{press2022alibi,
  title={Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation},
  author={Press, Ofir and Smith, Noah A. and Lewis, Mike},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2022}
}""",
    'arXiv:2103.14030': """@inproceedings{liu2021swin,
  title={Swin Transformer: Hierarchical Vision Transformer using Shifted Windows},
  author={Liu, Ze and Lin, Yutong and Cao, Yue and Hu, Han and Wei, Yixuan and Zhang, Zheng and Lin, Stephen and Guo, Baining},
  booktitle={IEEE/CVF International Conference on Computer Vision (ICCV)},
  year={2021}
}""",
}
TIMM_CITATION = """@misc{rw2019timm,
  author={Wightman, Ross},
  title={PyTorch Image Models},
  year={2019},
  publisher={GitHub},
  journal={GitHub repository},
  doi={10.5281/zenodo.4414861},
  howpublished={\\url{https://github.com/huggingface/pytorch-image-models}}
}"""
UNTRAINED_RECIPE = 'Not trained: the weights are freshly initialised (exported with `--random-init`).'
IN100_RECIPE = (
    "Trained from scratch on ImageNet100 (the 100-class ImageNet-1k subset of Tian et al. 2019, built with "
    "`timm-pe make-imagenet100`) with timm's `train.py`, following the ALiBi-vs-RoPE ViT study: 224 px, 100 epochs "
    "(about 50K steps at batch 256, the first 10K a linear warmup), AdamW (betas 0.9, 0.999), learning rate 1e-3 "
    "with cosine decay, weight decay 0.05, RandAugment m9 (mstd 0.5), mixup 0.8, cutmix 1.0, random erasing 0.25, "
    "label smoothing 0.1.")


def registered_models(pretrained: bool = False) -> List[str]:
    """Names of every model timm-pe registers in timm (those with weights, with their tags, if ``pretrained``)."""
    names = timm.list_pretrained() if pretrained else timm.list_models()
    return [n for n in names if model_entrypoint(split_model_name_tag(n)[0]).__module__.startswith('timm_pe.')]


def registered_tags() -> List[str]:
    """Every ``arch.tag`` timm-pe registers, with weights or not yet (a card exists for each)."""
    names = timm.list_models(include_tags=True)
    return [n for n in names if split_model_name_tag(n)[1]
            and model_entrypoint(split_model_name_tag(n)[0]).__module__.startswith('timm_pe.')]


def read_metrics(path: Path, model_filter: Optional[str] = None) -> List[Dict[str, str]]:
    """Rows of a results CSV in timm's validate.py / ``timm-pe sweep`` format (``img_size`` and ``top1`` columns,
    optional ``model`` and ``source``), keeping those whose ``model`` contains ``model_filter``."""
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    if rows and not {'img_size', 'top1'} <= set(rows[0]):
        raise ValueError(f'{path}: a metrics CSV needs img_size and top1 columns, found {sorted(rows[0])}')
    if model_filter:
        rows = [r for r in rows if model_filter in r.get('model', '')]
    return rows


def metrics_table(rows: Sequence[Mapping[str, str]]) -> str:
    """Markdown table of top-1 per test resolution, one column per ``model`` value in the rows."""
    if not rows:
        return 'No measurements recorded for these weights yet.'
    series = list(dict.fromkeys(r.get('model', '') for r in rows))
    top1 = {(r.get('model', ''), int(r['img_size'])): r['top1'].strip() for r in rows}
    sizes = sorted({size for _, size in top1})
    header = ['top-1 (%)'] if len(series) == 1 else [f'{s} top-1 (%)' for s in series]
    lines = ['| image size | ' + ' | '.join(header) + ' |', '|---' * (len(header) + 1) + '|']
    for size in sizes:
        cells = [top1.get((s, size), '') for s in series]
        lines.append(f'| {size} | ' + ' | '.join(cells) + ' |')
    sources = list(dict.fromkeys(r['source'] for r in rows if r.get('source')))
    if sources:
        lines += ['', 'Source: ' + '; '.join(sources) + '.']
    return '\n'.join(lines)


def default_recipe(model_name: str, pretrained_cfg: Mapping) -> str:
    """How the weights were trained: the ImageNet100 recipe for ``.in100`` tags, the origin for converted ones."""
    if split_model_name_tag(model_name)[1] == 'in100':
        recipe = IN100_RECIPE
        recipe_file = RECIPES_DIR / f'{model_name}.yaml'
        if recipe_file.is_file():
            recipe += f'\n\n`recipes/{recipe_file.name}`:\n\n```yaml\n{recipe_file.read_text().strip()}\n```'
        return recipe
    if pretrained_cfg.get('origin_url'):
        return (f"Trained by the original authors ({pretrained_cfg['origin_url']}). This tag downloads "
                f"`{pretrained_cfg['hf_hub_id']}` and converts it to this architecture on load.")
    return 'Not recorded.'


def _paper_ids(paper_ids) -> tuple:
    return (paper_ids,) if isinstance(paper_ids, str) else tuple(paper_ids or ())


def _papers(paper_ids) -> str:
    return '\n'.join(f'  - {PAPER_TITLES.get(i, i)}: https://arxiv.org/abs/{i.split(":")[-1]}'
                     for i in _paper_ids(paper_ids))


def _citations(paper_ids) -> str:
    entries = [CITATIONS[i] for i in _paper_ids(paper_ids) if i in CITATIONS] + [TIMM_CITATION]
    return '\n'.join(f'```bibtex\n{entry}\n```' for entry in entries)


def _size(size) -> str:
    return ' x '.join(str(s) for s in size[-2:])


def _dataset(model_name: str, cfg: Mapping) -> Optional[Tuple[str, Optional[str]]]:
    """(name, Hub dataset id or None) of the data the weights were trained on, where the tag says so."""
    if split_model_name_tag(model_name)[1] == 'in100':
        return 'ImageNet100, a 100-class subset of ImageNet-1k (Tian et al. 2019)', None
    if cfg.get('origin_url') and cfg.get('num_classes') == 1000:
        return 'ImageNet-1k', 'imagenet-1k'
    return None


def training_size(model: torch.nn.Module, model_name: str) -> Optional[Tuple[int, int]]:
    """The image size the weights were trained at, where known: a RoPE model's recorded training size, or
    the registered size of a tag whose weights we know (ImageNet100 recipe, converted ImageNet-1k weights)."""
    train_size = get_model_args(model).get('rope_train_img_size')
    if train_size is not None:
        return tuple(to_2tuple(train_size))
    name, tag = split_model_name_tag(model_name)
    if tag and timm.is_model(name):
        cfg = get_pretrained_cfg(model_name)
        if cfg is not None and (tag == 'in100' or cfg.origin_url):
            return tuple(cfg.input_size[-2:])
    return None


def render_card(
        model: torch.nn.Module,
        model_name: str,
        repo_id: Optional[str] = None,
        metrics: Sequence[Mapping[str, str]] = (),
        recipe: Optional[str] = None,
        template: Path = DEFAULT_TEMPLATE,
        trained: bool = True,
) -> str:
    """The model card for ``model`` as registered under ``model_name`` (``arch`` or ``arch.tag``).

    It states what the export knows and no more: the dataset and training size only where the tag (or a
    RoPE model's recorded training grid) gives them, the papers of its encoding and weights.
    ``trained=False`` marks freshly initialised weights.
    """
    if not Path(template).is_file():
        raise FileNotFoundError(f'Model card template {template} not found')
    cfg = model.pretrained_cfg
    arch = split_model_name_tag(model_name)[0]
    model_args = get_model_args(model)
    is_rope = takes_rope_scaling(getattr(model, 'attn_pos', None))
    built_size = _size(cfg['input_size'])
    train_size = training_size(model, model_name) if trained else None
    dataset = _dataset(model_name, cfg) if trained else None
    load_name = f'hf-hub:{repo_id}' if repo_id else model_name
    if not trained:
        size_line, dataset_line = f'built at {built_size}; not trained', f'none; {model.num_classes} classes'
    else:
        size_line = (f'trained at {_size(train_size)}' if train_size else
                     f'built at {built_size}; the training size is not recorded')
        dataset_line = f'{dataset[0] if dataset else "not recorded"}; {model.num_classes} classes'
    details = [
        f'- **Architecture:** `{arch}`: {(model_entrypoint(arch).__doc__ or "").strip()}',
        f'- **Params (M):** {sum(p.numel() for p in model.parameters()) / 1e6:.1f}',
        f'- **Image size:** {size_line}; other sizes work without fine-tuning (see Usage)',
        f'- **Dataset:** {dataset_line}',
        f'- **Model args:** `{json.dumps(model_args)}`',
    ]
    if cfg.get('origin_url'):
        details.append(f'- **Original weights:** {cfg["origin_url"]} (`{cfg.get("hf_hub_id")}`)')
    if cfg.get('paper_ids'):
        details.append('- **Papers:**\n' + _papers(cfg['paper_ids']))
    resolution_usage = (
        "At another resolution the loader adapts the checkpoint (APE and RPB tables are resampled, RoPE and "
        "ALiBi need nothing) and the data config follows the size the model is built at:\n\n"
        f"```python\nmodel = timm.create_model('{load_name}', pretrained=True, img_size=384).eval()\n"
        "data_config = timm.data.resolve_model_data_config(model)  # input_size (3, 384, 384)\n```")
    if is_rope:
        resolution_usage += (
            "\n\nRoPE models also take `rope_scaling='interp'` (position interpolation) or `'ntk'` (NTK-aware "
            "frequency scaling), which scale positions from the grid the weights were trained at (recorded with "
            "them); accuracies in the table above are without it unless a row says otherwise.")
    if repo_id and model_name != arch:
        resolution_usage += (f"\n\nThe same weights load by registered name: "
                             f"`timm.create_model('{model_name}', pretrained=True)`.")
    return Template(Path(template).read_text()).substitute(
        model_name=model_name,
        license=cfg.get('license') or 'apache-2.0',
        datasets=f'datasets:\n- {dataset[1]}\n' if dataset and dataset[1] else '',
        description=cfg.get('description') or f'{arch} from timm-pe.',
        details='\n'.join(details),
        metrics=metrics_table(metrics),
        recipe=recipe or (default_recipe(model_name, cfg) if trained else UNTRAINED_RECIPE),
        load_name=load_name,
        resolution_usage=resolution_usage,
        citations=_citations(cfg.get('paper_ids')),
    )


def _drop_num_classes_from_model_args(config_path: Path) -> None:
    """The head size stays in ``num_classes`` (root and pretrained cfg) only: transformers' ``TimmWrapper``
    passes ``num_classes`` itself and fails on a second one in ``model_args``; timm reads the root one."""
    config = json.loads(config_path.read_text())
    config.get('model_args', {}).pop('num_classes', None)
    config_path.write_text(json.dumps(config, indent=2))


def export(
        model: torch.nn.Module,
        out_dir: Path,
        model_name: Optional[str] = None,
        repo_id: Optional[str] = None,
        metrics: Sequence[Mapping[str, str]] = (),
        recipe: Optional[str] = None,
        template: Path = DEFAULT_TEMPLATE,
        card_only: bool = False,
        trained: bool = True,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` for ``model`` into ``out_dir``.

    timm's ``save_for_hf`` records the reconstruction arguments (e.g. ``depth`` overrides) so that
    ``hf-hub:`` rebuilds the same architecture; the weights file is named in the pretrained cfg so that
    loading never looks for a pickled ``.bin``. The card is rendered first, so a failure leaves nothing behind.
    """
    out_dir = Path(out_dir)
    model_name = model_name or model.pretrained_cfg['architecture']
    card = render_card(model, model_name, repo_id, metrics, recipe, template, trained)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not card_only:
        save_for_hf(model, out_dir, model_config=dict(pretrained_cfg=dict(hf_hub_filename=WEIGHTS_FILE)),
                    safe_serialization=True)
        _drop_num_classes_from_model_args(out_dir / 'config.json')
    (out_dir / 'README.md').write_text(card)
    return out_dir


def push(
        folder: Path,
        repo_id: str,
        api: Optional[HfApi] = None,
        private: bool = False,
        revision: Optional[str] = None,
        create_pr: bool = False,
        commit_message: str = 'Add timm-pe weights',
):
    """Upload an exported folder to ``repo_id``, creating the repo if needed. Only the three exported files
    are sent, so no pickled weights reach the Hub. ``api`` defaults to ``HfApi()`` (token from the login)."""
    folder = Path(folder)
    missing = [name for name in UPLOADED_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f'{folder} is not an exported folder: missing {missing} (run `timm-pe export`)')
    api = api or HfApi(library_name='timm-pe', library_version=__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=list(UPLOADED_FILES),
                             revision=revision, create_pr=create_pr, commit_message=commit_message)
