"""``timm-pe make-imagenet100``: the ImageNet100 subset of an ImageNet-1k folder, built from symlinks.

IMAGENET_ROOT holds ``train/<wnid>/`` and ``val/<wnid>/`` (the ImageFolder layout timm's scripts read). OUT gets
the same layout for the 100 classes of ``timm_pe/data/imagenet100_classes.txt``, each class folder a symlink to
the original, so no image is copied and a class's label is its index in sorted WNID order, as in the ``.in100``
pretrained configs.
"""
import argparse
import os
from pathlib import Path
from typing import Dict, Sequence

from ..models._pretrained import imagenet100_wnids

SPLITS = ('train', 'val')


def _missing_classes(root: Path, splits: Sequence[str], wnids: Sequence[str]) -> Dict[str, list]:
    missing = {}
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f'{split_dir} not found: IMAGENET_ROOT must hold {"/, ".join(splits)}/ '
                                    f'folders with one sub-folder per WNID')
        absent = [w for w in wnids if not (split_dir / w).is_dir()]
        if absent:
            missing[split] = absent
    return missing


def make_imagenet100(
        root: Path,
        out: Path,
        splits: Sequence[str] = SPLITS,
) -> Dict[str, int]:
    """Link the ImageNet100 class folders of ``root`` into ``out``; returns the image count per split.

    Checks every class first, so a partial ImageNet fails before anything is written. Re-running over an
    existing OUT is fine as long as its links point at the same folders.
    """
    root, out = Path(root).resolve(), Path(out)
    wnids = imagenet100_wnids()
    missing = _missing_classes(root, splits, wnids)
    if missing:
        lines = [f'  {split}/: {len(absent)} of {len(wnids)} missing: {" ".join(absent)}'
                 for split, absent in missing.items()]
        raise FileNotFoundError(f'{root} lacks ImageNet100 classes (is it ImageNet-1k with val/ sorted into '
                                f'class folders?):\n' + '\n'.join(lines))
    counts = {}
    for split in splits:
        (out / split).mkdir(parents=True, exist_ok=True)
        for wnid in wnids:
            target, link = root / split / wnid, out / split / wnid
            if link.is_symlink() and link.resolve() == target:
                continue
            if link.exists() or link.is_symlink():
                raise FileExistsError(f'{link} exists and is not a link to {target}; use an empty OUT folder')
            link.symlink_to(target, target_is_directory=True)
        counts[split] = sum(len(os.listdir(root / split / wnid)) for wnid in wnids)
    return counts


def add_make_imagenet100_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('imagenet_root', type=Path, help='ImageNet-1k folder with train/ and val/ class folders')
    parser.add_argument('out', type=Path, help='folder to create the ImageNet100 links in')
    parser.add_argument('--splits', nargs='+', default=list(SPLITS), help='split folders to link (default: train val)')


def run_make_imagenet100(args) -> None:
    counts = make_imagenet100(args.imagenet_root, args.out, args.splits)
    summary = ', '.join(f'{split}: {count} images' for split, count in counts.items())
    print(f'ImageNet100 (100 classes) in {args.out}: {summary}')
