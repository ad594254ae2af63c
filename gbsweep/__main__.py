"""`python -m gbsweep ...` is `sweep ...`."""

from gbsweep.cli import cli

cli()
