"""RoPE's whole-model overhead over APE: inference and training-step throughput ratios in one interleaved run.

Run from the repository root: ``python -m benchmarks.overhead`` (ViT-S/16, 224 and 384 px, batch 8, one
intra-op thread); writes ``results/overhead.csv``. Every model of one size is built once, then the models'
steps are timed round-robin (one step of each model per round, in a shuffled order), so a load change on a
shared machine hits all of them alike. Reported per model and phase: median step time, and the throughput
ratio to the baseline taken two ways, the ratio of medians and the median of the per-round ratios (the
paired one is the steadier on a noisy machine). Also the time spent in the attention modules' forward (all
layers, per step; hooks on the attention modules only, none on their projections, so inference still folds
the rotation into the projection), and its excess over the baseline's as a fraction of the baseline's step:
where an encoding's cost lies, steadier than the ratios since it holds one part of the step. And, from
``torch.profiler`` over a few more steps of each model, every ATen op's own CPU time per step (median),
written beside the CSV as ``<name>_ops.csv``: where RoPE's time goes, op by op (in CPU inference, the complex
multiply ``aten::mul_`` and the weight gather ``aten::index_select``). Nothing here asserts on time.

The clock is the process's CPU time by default (``--clock cpu``): with one intra-op thread it is the
compute thread's own time, which a shared, oversubscribed machine inflates far less than wall time
(a descheduled process's wall clock counts other processes' work). ``--clock wall`` for wall time.

glibc's malloc is told to keep freed memory (``--allocator steady``, the default): by its own rules it gives
large freed blocks back to the kernel, and the next step to allocate them pays a page fault per 4 KiB
touched. How many a step pays depends on what the step before it left in the heap, not on its own model,
and at 384 px there were 165,792 per forward, with APE's step at 3.7 s against 3.1 s without them. The CSV
records the median page faults per step (``minor_faults``), so a run shows whether that held;
``--allocator system`` leaves malloc as it is.

``--reparam`` adds, in the same rounds, a copy of each rotary model as timm's ``reparameterize_model`` leaves it
(qkv rows in pair order: no per-call weight gather in CPU float32 inference), named ``NAME+reparam``.

``--twin`` adds, last, a second baseline model built afresh (its own weights, its own place in memory),
named ``NAME#2``: it does the baseline's work, so its ratio is the run's noise floor, which the same model's
matrix products, placed elsewhere in memory, spread by about 1% on a shared machine.
"""
import argparse
import ast
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import timm
import torch
from timm.utils import reparameterize_model
from torch import nn
from torch.profiler import ProfilerActivity, profile

import timm_pe  # noqa: F401  registers the models
from timm_pe.layers.attention import PositionalAttention
from timm_pe.tools.common import write_csv
from timm_pe.tools.timing import counting_faults, interleaved_times, keep_freed_memory, model_steps

DEFAULT_MODELS = ['vit_small_ape', 'vit_small_rope_axial', 'vit_small_rope_mixed']


def op_times(fns: Dict[str, Callable[[], object]], steps: int) -> Dict[str, Dict[str, float]]:
    """Per function, each ATen op's own CPU seconds per call, the median over ``steps`` profiled calls made
    round-robin as ``interleaved_times`` makes them."""
    per_call = {name: [] for name in fns}

    def profiled(name: str) -> Callable[[], None]:
        def run():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fns[name]()
            per_call[name].append({e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()
                                   if e.key.startswith('aten::')})
        return run
    interleaved_times({name: profiled(name) for name in fns}, steps, warmup=0)
    return {name: {op: statistics.median(call.get(op, 0.) for call in calls)
                   for op in set().union(*calls)} for name, calls in per_call.items()}


def ratio_rows(times: Dict[str, List[float]], baseline: str, batch: int, **fields) -> List[Dict[str, object]]:
    """Per model: median ms, throughput ratio to ``baseline`` (of medians, and median of per-round ratios)."""
    base = times[baseline]
    rows = []
    for name, t in times.items():
        rows.append(dict(
            **fields, model=name, batch=batch, reps=len(t), median_ms=round(1e3 * statistics.median(t), 2),
            samples_per_sec=round(batch / statistics.median(t), 2),
            vs_baseline=round(statistics.median(base) / statistics.median(t), 4),
            vs_baseline_paired=round(statistics.median(b / x for b, x in zip(base, t)), 4),
        ))
    return rows


def attention_time(model: nn.Module, clock: Callable[[], float]) -> List[float]:
    """A list that each forward of ``model`` extends by the seconds spent in its ``PositionalAttention``
    modules, all layers together (forward hooks on the model and those modules alone)."""
    spent, start = [], [0.]

    def new_forward(module, args):
        spent.append(0.)

    def enter(module, args):
        start[0] = clock()

    def leave(module, args, out):
        spent[-1] += clock() - start[0]
    model.register_forward_pre_hook(new_forward)
    for module in model.modules():
        if isinstance(module, PositionalAttention):
            module.register_forward_pre_hook(enter)
            module.register_forward_hook(leave)
    return spent


def reparameterized(models: Dict[str, nn.Module]) -> Dict[str, nn.Module]:
    """``NAME+reparam``: a reparameterized copy of each model that reparameterizing changes."""
    out = {}
    for name, model in models.items():
        copy = reparameterize_model(model)
        if any(not torch.equal(a, b) for a, b in zip(model.parameters(), copy.parameters())):
            out[f'{name}+reparam'] = copy
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=DEFAULT_MODELS, help='the first one is the baseline')
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 384])
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--reps', type=int, default=15, help='timed rounds per phase and size')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--op-steps', type=int, default=5, help='profiled steps per model for the ops CSV (0: none)')
    parser.add_argument('--threads', type=int, default=1,
                        help='intra-op threads (one: on a shared machine a second thread times the scheduler)')
    parser.add_argument('--clock', default='cpu', choices=['cpu', 'wall'],
                        help='process CPU time (default, see above) or wall time')
    parser.add_argument('--allocator', default='steady', choices=['steady', 'system'],
                        help="steady: glibc's malloc keeps freed memory (see above); system: as it is")
    parser.add_argument('--reparam', action='store_true',
                        help="also time every model that timm's reparameterize_model changes (the rotary ones: qkv rows "
                             "in pair order), as NAME+reparam, in the same rounds")
    parser.add_argument('--twin', action='store_true',
                        help='also time a second, separately built baseline model (NAME#2) in the same rounds: '
                             "its ratio to the baseline is the run's noise floor")
    parser.add_argument('--phases', nargs='+', default=['infer', 'train'], choices=['infer', 'train'])
    parser.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                        help='e.g. depth=2 for a quicker, shallower run (values read as Python literals)')
    parser.add_argument('--csv', type=Path, default=Path('results/overhead.csv'))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kwargs = {k: ast.literal_eval(v) for k, v in (item.split('=', 1) for item in args.model_kwargs)}

    if args.allocator == 'steady' and not keep_freed_memory():
        print("malloc has no mallopt here: the allocator is left as it is (--allocator system)")
        args.allocator = 'system'

    rows, op_rows = [], []
    print(f'{torch.get_num_threads()} thread(s), batch {args.batch_size}, {args.reps} rounds, {args.clock} clock, '
          f'{args.allocator} allocator, load average {os.getloadavg()[0]:.1f}')
    print(f'{"phase":6} {"px":>4} {"model":30} {"median ms":>10} {"img/s":>8} {"vs base":>8} {"paired":>8}'
          f' {"attn ms":>8} {"excess":>7} {"faults":>7}')
    clock = time.process_time if args.clock == 'cpu' else time.perf_counter
    for size in args.sizes:
        models = {name: timm.create_model(name, img_size=size, **kwargs) for name in args.models}
        if args.reparam:
            models.update(reparameterized(models))
        if args.twin:
            models[f'{args.models[0]}#2'] = timm.create_model(args.models[0], img_size=size, **kwargs)
        attention = {name: attention_time(m, clock) for name, m in models.items()}
        images = torch.randn(args.batch_size, 3, size, size)
        for phase in args.phases:
            faults = {name: [] for name in models}
            fns = {name: counting_faults(model_steps(m, images, phase == 'train',
                                                     lambda: torch.autocast('cpu', enabled=False)), faults[name])
                   for name, m in models.items()}
            times = interleaved_times(fns, args.reps, args.warmup, clock=clock)
            attn_ms = {name: 1e3 * statistics.median(spent[-args.reps:]) for name, spent in attention.items()}
            base_ms = 1e3 * statistics.median(times[args.models[0]])
            for row in ratio_rows(times, args.models[0], args.batch_size, phase=phase, img_size=size,
                                  threads=args.threads, clock=args.clock, allocator=args.allocator,
                                  load_avg=round(os.getloadavg()[0], 1)):
                row['attention_ms'] = round(attn_ms[row['model']], 2)
                row['attention_excess'] = round((attn_ms[row['model']] - attn_ms[args.models[0]]) / base_ms, 4)
                row['minor_faults'] = round(statistics.median(faults[row['model']][-args.reps:]))
                rows.append(row)
                print(f'{phase:6} {size:>4} {row["model"]:30} {row["median_ms"]:>10.1f} {row["samples_per_sec"]:>8.2f}'
                      f' {row["vs_baseline"]:>8.3f} {row["vs_baseline_paired"]:>8.3f} {row["attention_ms"]:>8.1f}'
                      f' {row["attention_excess"]:>7.3f} {row["minor_faults"]:>7}', flush=True)
            if args.op_steps:
                for name, ops in op_times(fns, args.op_steps).items():
                    op_rows += [dict(phase=phase, img_size=size, model=name, op=op, self_ms=round(1e3 * sec, 3))
                                for op, sec in sorted(ops.items(), key=lambda item: -item[1])]
    write_csv(rows, args.csv, list(rows[0]))
    print(f'wrote {args.csv}')
    if op_rows:
        ops_csv = args.csv.with_name(f'{args.csv.stem}_ops.csv')
        write_csv(op_rows, ops_csv, list(op_rows[0]))
        print(f'wrote {ops_csv}')


if __name__ == '__main__':
    main()
