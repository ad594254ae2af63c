"""The command line from a checkout: `python sweep.py run ...` is `sweep run ...`.

The CLI itself is gbsweep/cli.py; this file is not installed (an installed `sweep` module would
shadow, or be shadowed by, any other of that name), the `sweep` console script is.
"""

from gbsweep.cli import cli

if __name__ == "__main__":
    cli()
