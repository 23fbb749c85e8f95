"""The study's summary over seeds, rebuilt from the per-seed CSVs alone (``<results-dir>/seed<k>/results.csv``,
timm's results format): mean, standard deviation and range per (model, size), rankings at fixed test/train
ratios with which gaps exceed the seed spread, and a plot with one line per encoding and a band for the spread.

"Exceeds the seed spread" is read strictly: model A is clearly above B at a size when every seed of A
scores higher than every seed of B (with three seeds each, a one-sided chance of 1 in 20 were the two
the same). Gaps that pass it are worth reading; the others are not, whatever their size.
"""
import csv
import statistics
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .common import pyplot, save_figure, write_csv

SUMMARY_COLUMNS = ['model', 'img_size', 'seeds', 'top1_mean', 'top1_std', 'top1_min', 'top1_max', 'top5_mean',
                   'top5_std', 'param_count']
RANK_RATIOS = (1., 1.5, 2.5)
# the order of the tables below: encodings, then RoPE with its hooks
TABLE_ORDER = ['ape', 'nope', 'alibi2d', 'alibi2d_spread', 'alibi2d_sq', 'rpb', 'lookhere', 'rope_dinov3',
               'rope_axial', 'rope_axial+interp', 'rope_axial+ntk', 'rope_mixed', 'rope_mixed+interp',
               'rope_mixed+ntk', 'rope_axial_f0.25', 'rope_axial_f0.25+interp', 'rope_axial_f0.25+ntk',
               'rope_axial_f0.5', 'rope_axial_f0.5+interp', 'rope_axial_f0.5+ntk']
# The article's ImageNet100 top-1 (../shared/seeds/blog_alibi_vs_rope_vit.txt; ViT trained at 224 px) at 224,
# 320, 352 and 512 px: its 1.5x is the mean of 320 and 352, and its largest test, 512 px, is 2.29x.
ARTICLE_TOP1 = {'ape': (55.48, 57.02, 56.48, 52.32), 'nope': (53.86, 55.86, 55.22, 49.80),
                'rope_mixed': (55.26, 59.84, 59.70, 55.62), 'alibi2d': (60.74, 64.62, 65.54, 62.20)}
# Paired comparisons (same seed: same initial shared weights, data order and augmentation), each answering one
# question of the write-up: the slope ablation, whether ALiBi is any bias here, and the newer encodings.
PAIRS = [('alibi2d_spread', 'alibi2d'), ('alibi2d', 'nope'), ('alibi2d_sq', 'alibi2d'), ('lookhere', 'ape'),
         ('rope_dinov3', 'rope_axial'), ('lookhere', 'rope_dinov3'), ('rope_axial+interp', 'lookhere'),
         ('rope_axial+interp', 'rope_dinov3'), ('rope_axial_f0.25+interp', 'rope_axial+interp')]

Scores = Dict[Tuple[str, int], Dict[int, float]]  # (model, size) -> seed -> top-1


def read_seed_rows(results_dir: Path) -> Dict[int, List[Dict[str, str]]]:
    """seed -> its rows, from every ``seed<k>/results.csv`` under ``results_dir``."""
    out = {}
    for path in sorted(results_dir.glob('seed*/results.csv')):
        suffix = path.parent.name[len('seed'):]
        if not suffix.isdigit():
            continue
        with open(path, newline='') as f:
            out[int(suffix)] = list(csv.DictReader(f))
    return dict(sorted(out.items()))


def scores(per_seed: Mapping[int, Sequence[Mapping[str, str]]], metric: str = 'top1') -> Scores:
    table: Scores = {}
    for seed, rows in per_seed.items():
        for r in rows:
            table.setdefault((r['model'], int(r['img_size'])), {})[seed] = float(r[metric])
    return table


def _std(values: Sequence[float]) -> Optional[float]:
    """Sample standard deviation (n - 1); None for a single seed, which has no spread to show."""
    return statistics.stdev(values) if len(values) > 1 else None


def _mean_std(values: Sequence[float], digits: int = 2) -> str:
    std = _std(values)
    return f'{statistics.fmean(values):.{digits}f}' + ('' if std is None else f' ± {std:.{digits}f}')


def _round(value: Optional[float]) -> object:
    return '' if value is None else round(value, 3)


def summarise(per_seed: Mapping[int, Sequence[Mapping[str, str]]]) -> List[Dict[str, object]]:
    """One row per (model, size): seeds, mean, std, min and max of top-1, mean and std of top-5."""
    top1, top5 = scores(per_seed, 'top1'), scores(per_seed, 'top5')
    params = {r['model']: r['param_count'] for rows in per_seed.values() for r in rows}
    out = []
    for (model, size), by_seed in top1.items():
        v1, v5 = list(by_seed.values()), list(top5[model, size].values())
        out.append(dict(model=model, img_size=size, seeds=len(v1), top1_mean=round(statistics.fmean(v1), 3),
                        top1_std=_round(_std(v1)), top1_min=min(v1), top1_max=max(v1),
                        top5_mean=round(statistics.fmean(v5), 3), top5_std=_round(_std(v5)),
                        param_count=params[model]))
    order = list(dict.fromkeys(r['model'] for rows in per_seed.values() for r in rows))
    return sorted(out, key=lambda r: (order.index(r['model']), r['img_size']))


def clearly_above(a: Mapping[int, float], b: Mapping[int, float]) -> bool:
    """Every seed of ``a`` above every seed of ``b``; needs two seeds or more on each side."""
    return len(a) > 1 and len(b) > 1 and min(a.values()) > max(b.values())


def _ranges(ranks: Sequence[int]) -> str:
    """[2, 3, 4, 7] -> '2-4, 7'."""
    parts, start = [], None
    for i, r in enumerate(ranks):
        start = r if start is None else start
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            parts.append(str(start) if start == r else f'{start}-{r}')
            start = None
    return ', '.join(parts)


def ranking(table: Scores, size: int, models: Sequence[str]) -> List[Dict[str, object]]:
    """Models at ``size`` by mean top-1, each with the ranks below it that it is clearly above."""
    present = [m for m in models if (m, size) in table]
    ranked = sorted(present, key=lambda m: -statistics.fmean(table[m, size].values()))
    out = []
    for i, m in enumerate(ranked):
        values = list(table[m, size].values())
        beats = [j + 1 for j, other in enumerate(ranked) if clearly_above(table[m, size], table[other, size])]
        out.append(dict(rank=i + 1, model=m, mean=statistics.fmean(values), text=_mean_std(values), low=min(values),
                        high=max(values), seeds=len(values), beats=_ranges(beats)))
    return out


def ranking_markdown(table: Scores, size: int, ratio: float, models: Sequence[str]) -> List[str]:
    lines = [f'### {size} px ({ratio:g}x the training size)', '',
             '| rank | model | top-1 mean ± std | min - max | seeds | clearly above ranks |', '|---|---|---|---|---|---|']
    for r in ranking(table, size, models):
        lines.append(f'| {r["rank"]} | {r["model"]} | {r["text"]} | {r["low"]:.2f} - {r["high"]:.2f} | {r["seeds"]} | '
                     f'{r["beats"] or "-"} |')
    return lines + ['']


def mean_std_table(summary: Sequence[Mapping[str, object]], max_seeds: int) -> List[str]:
    """Markdown: models down, sizes across, 'mean ± std' cells, the seed count where it is short."""
    sizes = sorted({int(r['img_size']) for r in summary})
    models = list(dict.fromkeys(r['model'] for r in summary))
    cell = {(r['model'], int(r['img_size'])): r for r in summary}
    lines = ['| model | ' + ' | '.join(map(str, sizes)) + ' |', '|' + '---|' * (len(sizes) + 1)]
    for m in models:
        cells = []
        for s in sizes:
            r = cell.get((m, s))
            if r is None:
                cells.append('-')
                continue
            text = f'{float(r["top1_mean"]):.1f}' + (f' ± {float(r["top1_std"]):.1f}' if r['top1_std'] != '' else '')
            cells.append(text if int(r['seeds']) == max_seeds else f'{text} (n={r["seeds"]})')
        lines.append(f'| {m} | ' + ' | '.join(cells) + ' |')
    return lines


def _ordered(table: Scores) -> List[str]:
    models = list(dict.fromkeys(m for m, _ in table))
    return sorted(models, key=lambda m: (TABLE_ORDER.index(m) if m in TABLE_ORDER else len(TABLE_ORDER),
                                         models.index(m)))


def ratio_sizes(train_size: int) -> List[int]:
    return [round(train_size * ratio) for ratio in RANK_RATIOS]


def resolution_table(table: Scores, train_size: int) -> List[str]:
    """Markdown: top-1 'mean ± std (seeds)' at 1x, 1.5x and 2.5x the training size."""
    sizes = ratio_sizes(train_size)
    lines = ['| encoding | ' + ' | '.join(f'{s} px ({r:g}x)' for s, r in zip(sizes, RANK_RATIOS)) + ' |',
             '|' + '---|' * (len(sizes) + 1)]
    for m in _ordered(table):
        if not any((m, s) in table for s in sizes):
            continue
        cells = []
        for s in sizes:
            values = list(table.get((m, s), {}).values())
            cells.append(f'{_mean_std(values, 1)} ({len(values)})' if values else '-')
        lines.append(f'| {m} | ' + ' | '.join(cells) + ' |')
    return lines


def _signed(value: float) -> str:
    text = f'{value:+.1f}'
    return '0.0' if text in ('+0.0', '-0.0') else text


def _change(table: Scores, model: str, size: int, train_size: int) -> str:
    """Mean over seeds of each seed's change from its own training-size top-1, with the seed count."""
    at_size, at_train = table.get((model, size), {}), table.get((model, train_size), {})
    changes = [at_size[k] - at_train[k] for k in at_size if k in at_train]
    return f'{statistics.fmean(changes):+.1f} ({len(changes)})' if changes else '-'


def paired_table(table: Scores, train_size: int) -> List[str]:
    """Markdown: per pair of ``PAIRS``, A - B seed by seed at 1x, 1.5x and 2.5x: mean, and the lowest to the
    highest seed's difference, with the number of seeds both have."""
    sizes = ratio_sizes(train_size)
    lines = ['| A - B | ' + ' | '.join(f'{s} px ({r:g}x)' for s, r in zip(sizes, RANK_RATIOS)) + ' |',
             '|' + '---|' * (len(sizes) + 1)]
    for a, b in PAIRS:
        cells = []
        for s in sizes:
            at_a, at_b = table.get((a, s), {}), table.get((b, s), {})
            diffs = [at_a[k] - at_b[k] for k in sorted(at_a) if k in at_b]
            cells.append(f'{_signed(statistics.fmean(diffs))} [{_signed(min(diffs))}, {_signed(max(diffs))}] '
                         f'({len(diffs)})' if diffs else '-')
        if any(c != '-' for c in cells):
            lines.append(f'| {a} - {b} | ' + ' | '.join(cells) + ' |')
    return lines


def article_table(table: Scores, train_size: int) -> List[str]:
    """Markdown: change of top-1 from the training size at 1.5x and at the largest ratio, the article's
    beside ours."""
    _, mid, top = ratio_sizes(train_size)
    lines = ['| encoding | article 1.5x | ours 1.5x | article 2.29x | ours 2.5x |', '|---|---|---|---|---|']
    for m in _ordered(table):
        if (m, train_size) not in table:
            continue
        article = ARTICLE_TOP1.get(m)
        at_15 = f'{(article[1] + article[2]) / 2 - article[0]:+.1f}' if article else '-'
        at_229 = f'{article[3] - article[0]:+.1f}' if article else '-'
        lines.append(f'| {m} | {at_15} | {_change(table, m, mid, train_size)} | {at_229} | '
                     f'{_change(table, m, top, train_size)} |')
    return lines


def plot_summary(summary: Sequence[Mapping[str, object]], path: Path, train_size: int) -> bool:
    """Left: every encoding as trained; right: the RoPE hooks (interp, ntk) with APE for reference.
    Line: mean over seeds; band: the lowest to the highest seed."""
    plt = pyplot()
    if plt is None:
        return False
    models = list(dict.fromkeys(r['model'] for r in summary))
    bases = list(dict.fromkeys(m.split('+')[0] for m in models))
    colours = plt.get_cmap('tab10' if len(bases) <= 10 else 'tab20')
    panels = ([m for m in models if '+' not in m], [m for m in models if '+' in m or m == 'ape'])
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)
    for ax, panel, title in zip(axes, panels, ('as trained (integer positions)', 'RoPE with a test-time hook')):
        for model in panel:
            base, _, hook = model.partition('+')
            pts = sorted((int(r['img_size']), float(r['top1_mean']), float(r['top1_min']), float(r['top1_max']))
                         for r in summary if r['model'] == model)
            xs = [p[0] for p in pts]
            colour = colours(bases.index(base) % colours.N)
            ax.plot(xs, [p[1] for p in pts], marker='o', markersize=3, color=colour, label=model,
                    linestyle={'': '-', 'interp': '--'}.get(hook, ':'))
            ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], color=colour, alpha=0.15, linewidth=0)
        ax.axvline(train_size, color='grey', linewidth=0.8, linestyle='-.')
        ax.set_title(title)
        ax.set_xlabel('test resolution (px)')
        ax.grid(alpha=0.3)
        if panel:
            ax.legend(fontsize=7, loc='lower right')
    axes[0].set_ylabel('top-1 (%), mean over seeds; band: min to max')
    fig.suptitle(f'Tiny ViT/8 trained at {train_size} px on Imagenette (grey: training size)')
    save_figure(plt, fig, path)
    return True


def train_time_markdown(results_dir: Path) -> List[str]:
    runs: Dict[str, List[Dict[str, str]]] = {}
    for path in sorted(results_dir.glob('seed*/train_times.csv')):
        with open(path, newline='') as f:
            for r in csv.DictReader(f):
                runs.setdefault(r['variant'], []).append(r)
    lines = ['| variant | seeds | minutes per run (mean) | final train loss (mean ± std) | params (M) |',
             '|---|---|---|---|---|']
    for variant, rs in runs.items():
        losses = [float(r['final_train_loss']) for r in rs]
        minutes = statistics.fmean(float(r['train_seconds']) for r in rs) / 60
        lines.append(f'| {variant} | {len(rs)} | {minutes:.1f} | {_mean_std(losses, 4)} | {rs[0]["param_count"]} |')
    return lines


def write_summary(results_dir: Path, train_size: int) -> List[Dict[str, object]]:
    """summary.csv, results.md and top1_vs_resolution.png from the per-seed CSVs in ``results_dir``."""
    per_seed = read_seed_rows(results_dir)
    if not per_seed:
        raise FileNotFoundError(f'no seed<k>/results.csv under {results_dir}: sweep at least one seed first')
    summary = summarise(per_seed)
    write_csv(summary, results_dir / 'summary.csv', SUMMARY_COLUMNS)
    table = scores(per_seed)
    models = list(dict.fromkeys(r['model'] for r in summary))
    max_seeds = max(int(r['seeds']) for r in summary)
    text = [f'# Resolution study: top-1 (%) on Imagenette val, trained at {train_size} px',
            '', f'Seeds: {", ".join(map(str, per_seed))}. Mean ± sample std over seeds (n = {max_seeds} unless '
            'marked); every seed\'s numbers are in `seed<k>/results.csv`.', '',
            *mean_std_table(summary, max_seeds), '',
            '## At 1x, 1.5x and 2.5x the training size (number of seeds in brackets)', '',
            *resolution_table(table, train_size), '',
            '## Paired differences: A - B in the same seed, mean [lowest, highest] (seeds)', '',
            *paired_table(table, train_size), '',
            '## Against the article: change from the training size, at matching test/train ratios', '',
            *article_table(table, train_size), '', '## Rankings', '',
            'A model is *clearly above* another when every one of its seeds beats every seed of the other.', '']
    for ratio in RANK_RATIOS:
        size = round(train_size * ratio)
        if any(s == size for _, s in table):
            # at the training size the hooks change nothing: rank the encodings only
            pool = [m for m in models if '+' not in m] if ratio == 1 else models
            text += ranking_markdown(table, size, ratio, pool)
    text += ['## Training time (wall clock of each run on a shared 2-core CPU)', '', *train_time_markdown(results_dir), '']
    (results_dir / 'results.md').write_text('\n'.join(text))
    plot_summary(summary, results_dir / 'top1_vs_resolution.png', train_size)
    return summary
