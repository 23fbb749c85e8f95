"""The timm-pe command line and its subcommands; the library never imports this package."""
