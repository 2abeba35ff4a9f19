"""Layer 6, the command line: ``causalprune score`` (``command.py``) and the model specs it
builds (``model_specs.py``). ``causalprune_fast.cli.main`` is the entry point, as before the
layered layout."""

from causalprune_fast.cli.command import main

__all__ = ["main"]
