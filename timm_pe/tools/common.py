"""What the commands share: argument parsing as timm's scripts do it, model building and running options
(device, dtype, autocast, compile), CSV and plot output, and where the shared data lives."""
import argparse
import contextlib
import csv
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from timm.utils import ParseKwargs, reparameterize_model
from torch import nn

from ..layers import takes_rope_scaling

# a source checkout sits beside ../shared (see ../shared/data/README.md)
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'imagenette2-224'
DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}


def parse_sizes(text: str) -> List[int]:
    """'32:160:16' (start:stop:step, stop included) or '96,128,224'."""
    if ':' in text:
        parts = [int(p) for p in text.split(':')]
        if len(parts) != 3 or parts[2] <= 0 or parts[0] > parts[1]:
            raise argparse.ArgumentTypeError(f'expected start:stop:step with start <= stop and step > 0, got {text!r}')
        return list(range(parts[0], parts[1] + 1, parts[2]))
    try:
        return [int(p) for p in text.split(',') if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected sizes like 32:160:16 or 96,128,224, got {text!r}') from None


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True, default: Sequence[str] = (),
                        kwargs_help: str = 'e.g. num_classes=10 class_token=False') -> None:
    """Models as positional names or timm's ``--model`` (repeatable), and timm's ``--model-kwargs``
    (``key=value``, values read as Python literals, so ``False`` is a bool)."""
    names = 'registered names, name.tag, or hf-hub: ids'
    parser.add_argument('model_names', nargs='*', metavar='MODEL', help=names)
    parser.add_argument('-m', '--model', dest='model_flags', action='extend', nargs='+', default=[], metavar='MODEL',
                        help=f'{names} (as in timm\'s scripts; adds to the positional ones)')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                        help=kwargs_help)
    parser.set_defaults(model_required=required, model_default=list(default))


def model_names(args: argparse.Namespace) -> List[str]:
    names = list(args.model_names) + list(args.model_flags)
    if not names and args.model_required:
        raise SystemExit('no model given: pass model names or --model NAME')
    return names or list(args.model_default)


def add_runtime_arguments(parser: argparse.ArgumentParser, threads: int = 2) -> None:
    """timm's ``--device``, ``--amp``, ``--amp-dtype``, ``--model-dtype``, ``--reparam`` and ``--torchcompile``, plus
    CPU threads."""
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=threads, help='torch intra-op threads')
    parser.add_argument('--amp', action='store_true', help='mixed precision autocast (dtype: --amp-dtype)')
    parser.add_argument('--amp-dtype', default='bfloat16', choices=['float16', 'bfloat16'])
    parser.add_argument('--model-dtype', choices=list(DTYPES), help='cast the model (and inputs) to this dtype')
    parser.add_argument('--reparam', action='store_true',
                        help="reparameterize for inference, as timm's scripts do (rotary layers: qkv rows in pair "
                             "order, for CPU float32 inference)")
    parser.add_argument('--torchcompile', nargs='?', const='inductor', metavar='BACKEND',
                        help='torch.compile the model (backend default: inductor)')


def prepare_model(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """The model reparameterized where ``--reparam`` asks, on ``--device`` in ``--model-dtype``, compiled where
    ``--torchcompile`` asks."""
    if args.reparam:
        model = reparameterize_model(model, inplace=True)
    model = model.to(device=args.device, dtype=DTYPES[args.model_dtype] if args.model_dtype else None)
    return torch.compile(model, backend=args.torchcompile) if args.torchcompile else model


def input_dtype(args: argparse.Namespace) -> torch.dtype:
    return DTYPES[args.model_dtype] if args.model_dtype else torch.float32


def autocast(args: argparse.Namespace):
    """``torch.autocast`` for ``--amp``, else a no-op context."""
    if not args.amp:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(args.device).type, dtype=DTYPES[args.amp_dtype])


def is_rope_model(model: nn.Module) -> bool:
    return takes_rope_scaling(getattr(model, 'attn_pos', None))


def param_count_millions(model: nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 3)


def write_csv(rows: Sequence[Mapping[str, object]], path: Path, columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None (with a note) where matplotlib is not installed:
    plots are an extra (``pip install timm-pe[study]``), the CSVs are not."""
    try:
        import matplotlib
    except ImportError:
        print('matplotlib is not installed: no plot written (pip install "timm-pe[study]")')
        return None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def save_figure(plt, fig, path: Path) -> None:
    """Lay out, write (creating the folder) and close a matplotlib figure."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def model_family(model_name: str) -> Optional[str]:
    """'vit' or 'swin' for a timm-pe model name (with or without tag), None for other models."""
    import timm
    from timm.models import model_entrypoint, split_model_name_tag
    arch = split_model_name_tag(model_name)[0]
    if not timm.is_model(arch):
        return None
    module = model_entrypoint(arch).__module__
    return module.rsplit('.', 1)[-1] if module.startswith('timm_pe.models.') else None


def default_kwargs(model_name: str, per_family: Dict[str, Dict]) -> Dict:
    return dict(per_family.get(model_family(model_name), {}))
