from causalprune_fast import _extension  # noqa: F401
