"""What was measured for one layer (:class:`LayerScores`), built by ``scoring/layer_mi.py``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch


@dataclass
class LayerScores:
    """What was measured for one layer (docs/method.md section 6)."""

    name: str
    kind: str
    incoming: torch.Tensor  # [C_out]: sum over input units of MI into each output channel
    outgoing: torch.Tensor  # [C_in]: sum over taps and outputs of MI out of each input channel
    sensitivity: float  # sum of the whole MI matrix
    response: str  # where outputs were measured, e.g. "output -> bn1 -> relu"
    response_reason: str | None  # why the search stopped before norm + activation, if it did
    samples: int
    input_units: int
    groups: int
    taps: str
    timings: dict[str, float] = field(default_factory=dict)
    model_output: bool = False  # its output channels are the model's outputs: not prunable
    x_ranges: torch.Tensor | None = None
    y_ranges: torch.Tensor | None = None
    matrix: torch.Tensor | None = None
    # How it was measured: "propagated", or in local mode "patches", "full-tensor" or
    # "fused-triton" (docs/method.md section 2.2), and the backend of its MI. None in files
    # written before these were recorded.
    path: str | None = None
    backend: str | None = None
    # With pairs_per_unit (docs/method.md section 5.4): incoming and outgoing are estimates,
    # these their standard errors, and ``pairs`` the pairs measured. None: every pair measured.
    incoming_se: torch.Tensor | None = None
    outgoing_se: torch.Tensor | None = None
    pairs: int | None = None
    # Calls of the layer per forward pass whose rows are pooled (a layer used several times,
    # docs/method.md section 3.4), and where it is called through its weight by functional
    # calls (``"F.linear in 'features.1.0.attn'"``), or None. Files written before these were
    # recorded read as 1 and None.
    calls: int = 1
    called_by: str | None = None

    def meta(self) -> dict:
        return {
            "kind": self.kind,
            "sensitivity": self.sensitivity,
            "response": self.response,
            "response_reason": self.response_reason,
            "samples": self.samples,
            "path": self.path,
            "backend": self.backend,
            "calls": self.calls,
            "called_by": self.called_by,
            "input_units": self.input_units,
            "groups": self.groups,
            "taps": self.taps,
            "timings": self.timings,
            "model_output": self.model_output,
            "pairs": self.pairs,
        }


def few_sample_layers(layers: Mapping[str, LayerScores], bins: int) -> list[str]:
    """``"name (samples)"`` of every prunable layer measured on fewer than ``bins**2`` samples,
    where the plug-in MI is dominated by its bias (layers whose output is the model's output
    are left out: their channels are not pruned)."""
    return [
        f"{name} ({s.samples})"
        for name, s in layers.items()
        if s.samples < bins * bins and not s.model_output
    ]
