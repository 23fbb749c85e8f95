"""``timm-pe`` command line. Each subcommand lives in a module exposing ``add_<command>_arguments(parser)``
and ``run_<command>(args)``; only the module of the command being run is imported."""
import argparse
import importlib
import sys

COMMANDS = {
    'demo': ('timm_pe.tools.demo', 'bench every encoding and, where Imagenette is present, a short sweep'),
    'sweep': ('timm_pe.tools.sweep', 'top-1/top-5 of models on an ImageFolder over a list of resolutions'),
    'bench': ('timm_pe.tools.bench', 'throughput, latency and memory of models over resolutions'),
    'study': ('timm_pe.tools.study', 'the small-scale reproduction: train every encoding, then sweep'),
    'export': ('timm_pe.tools.hub', 'write a Hub-ready folder (config.json, model.safetensors, README.md)'),
    'push': ('timm_pe.tools.hub', 'upload an exported folder to the Hugging Face Hub'),
    'run': ('timm_pe.tools.run', "run one of timm's scripts (validate.py, train.py, ...) with these models registered"),
    'make-imagenet100': ('timm_pe.tools.imagenet100', 'build the ImageNet100 subset from ImageNet-1k with symlinks'),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog='timm-pe', description='Position encodings for vision transformers.')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if argv[:1] == [name]:
            module = importlib.import_module(module_name)
            suffix = name.replace('-', '_')
            getattr(module, f'add_{suffix}_arguments')(cmd)
            cmd.set_defaults(run=getattr(module, f'run_{suffix}'))
    args = parser.parse_args(argv)
    return args.run(args) or 0


if __name__ == '__main__':
    sys.exit(main())
