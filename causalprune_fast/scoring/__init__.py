"""Layer 4, scoring: :func:`causalprune_fast.score_model` (``score.py``) and its machinery, one
concern per module.

- ``plan.py``: :class:`ScorePlan`, every argument checked once, frozen.
- ``layer_state.py``: :class:`LayerState`, what is known about one measured layer during a run.
- ``hooks.py``: forward hooks that are always removed, and the model state restored on exit.
- ``probe.py``: the input noise, and the probe pass (what each layer sees, which are called).
- ``driver.py``: what both modes share: forward passes with hooks, binning, a layer's MI.
- ``propagated.py``: propagated mode: the noise from the input, budget batching.
- ``local.py``: local mode: calibration, then each layer alone, tiled within the budget.
- ``sampling.py``: sample rows of both modes; how local mode makes a layer's rows.
- ``layer_mi.py``: the MI of one layer (one process or distributed) and its LayerScores.
- ``fused_local.py``: which layers the fused local kernel can measure, and how.
"""
