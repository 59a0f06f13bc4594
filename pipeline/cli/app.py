"""The ``xray-pipeline`` click group (the commands register on it from their modules)."""

from __future__ import annotations

import click

from .._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xray-pipeline")
def cli():
    """Process dynamic X-ray imaging videos from scintillator detectors."""
