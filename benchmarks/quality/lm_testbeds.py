"""Function-preserving rescalings of the trained language models: the testbeds where weight
magnitude is known to mislead (``lm_study.py``).

Every rescaling multiplies one side of a channel by ``s > 0`` and divides the other side by it,
so the network computes the same function (checked with :func:`check_same_function` before a
testbed is used), while the weights' magnitudes change:

- **head dim** (value channel of one key/value head): the ``v`` projection's output row (and
  bias) times ``s``, the output projection's input column of every query head that reads that
  value channel divided by ``s`` (attention is linear in the values);
- **MLP neuron** (Llama's SwiGLU only): the ``up`` projection's row times ``s``, the ``down``
  projection's column divided by ``s`` (``silu(gate) * up`` is linear in ``up``); GPT-2's GELU
  is not positively homogeneous, so its neurons are not rescaled;
- **hidden dim** after a norm (RMSNorm / LayerNorm): the norm's weight (and bias) times ``s``,
  the input column of every projection that reads the norm's output divided by ``s``. Every
  norm before attention and MLP, and Llama's final norm (``lm_head`` columns); GPT-2's final
  LayerNorm feeds the tied embedding matrix, which cannot be divided without untying it, so it
  is left as it is.

Testbeds:

- ``rescaled``: every channel above gets its own ``s``, log-uniform in [1/8, 8].
- ``outliers``: large LLMs have a few hidden dims whose activations at the norms' outputs are
  tens of times larger than the rest, with correspondingly small weights reading them (LLM.int8,
  outlier suppression). Constructed here: ``OUTLIER_DIMS`` hidden dims, drawn at random per seed
  and the same in every norm (as in real models), get ``s`` log-uniform in [30, 100] at every
  norm; nothing else changes. The data-free criteria never see which dims were chosen.
"""

from __future__ import annotations

import math

import torch

TESTBEDS = ("trained", "rescaled", "outliers")
RESCALE_RANGE = (1 / 8, 8.0)
OUTLIER_RANGE = (30.0, 100.0)
OUTLIER_DIMS = 4


def _log_uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))).float()


def _blocks(model) -> list:
    """(norm before attention, attention, norm before MLP, MLP) per layer."""
    if hasattr(model, "transformer"):  # GPT-2
        return [(b.ln_1, b.attn, b.ln_2, b.mlp) for b in model.transformer.h]
    return [
        (b.input_layernorm, b.self_attn, b.post_attention_layernorm, b.mlp)
        for b in model.model.layers
    ]


def _scale_norm(norm, s: torch.Tensor) -> None:
    norm.weight.mul_(s)
    if getattr(norm, "bias", None) is not None:
        norm.bias.mul_(s)


def _divide_inputs(layer, s: torch.Tensor) -> None:
    """Divide the input columns of a Linear (``[out, in]``) or Conv1D (``[in, out]``) by ``s``."""
    if isinstance(layer, torch.nn.Linear):
        layer.weight.div_(s[None, :])
    else:
        layer.weight.div_(s[:, None])


@torch.no_grad()
def rescale(model, seed: int, testbed: str) -> dict:
    """Apply testbed ``testbed`` (``"rescaled"`` or ``"outliers"``) to ``model`` in place,
    drawing every factor from ``seed``; returns what was drawn (for config.json)."""
    if testbed not in ("rescaled", "outliers"):
        raise ValueError(f"unknown testbed {testbed!r}; known: {list(TESTBEDS)}")
    gen = torch.Generator().manual_seed(10_000 + seed)
    gpt2 = hasattr(model, "transformer")
    hidden = model.config.hidden_size
    info: dict = {"testbed": testbed, "seed": 10_000 + seed}

    def hidden_factors() -> torch.Tensor:
        if testbed == "rescaled":
            return _log_uniform(hidden, *RESCALE_RANGE, gen)
        s = torch.ones(hidden)
        s[outlier_dims] = _log_uniform(len(outlier_dims), *OUTLIER_RANGE, gen)
        return s

    if testbed == "outliers":
        outlier_dims = torch.randperm(hidden, generator=gen)[:OUTLIER_DIMS].sort().values
        info["outlier_dims"] = outlier_dims.tolist()
    factors = []
    for ln1, attn, ln2, mlp in _blocks(model):
        s = hidden_factors()
        _scale_norm(ln1, s)
        for p in (attn.c_attn,) if gpt2 else (attn.q_proj, attn.k_proj, attn.v_proj):
            _divide_inputs(p, s)
        factors.append(s)
        s = hidden_factors()
        _scale_norm(ln2, s)
        for p in (mlp.c_fc,) if gpt2 else (mlp.gate_proj, mlp.up_proj):
            _divide_inputs(p, s)
        factors.append(s)
        if testbed != "rescaled":
            continue
        if gpt2:  # value channels: the last third of c_attn's outputs; c_proj's input rows
            e = attn.c_attn.weight.shape[1] // 3
            sv = _log_uniform(e, *RESCALE_RANGE, gen)
            attn.c_attn.weight[:, 2 * e :].mul_(sv[None, :])
            attn.c_attn.bias[2 * e :].mul_(sv)
            attn.c_proj.weight.div_(sv[:, None])
        else:
            d, kv = attn.head_dim, attn.v_proj.out_features
            sv = _log_uniform(kv, *RESCALE_RANGE, gen)
            attn.v_proj.weight.mul_(sv[:, None])
            if attn.v_proj.bias is not None:
                attn.v_proj.bias.mul_(sv)
            group = attn.q_proj.out_features // kv  # query heads per key/value head
            per_query = sv.view(kv // d, 1, d).expand(kv // d, group, d).reshape(-1)
            attn.o_proj.weight.div_(per_query[None, :])
            n = mlp.up_proj.out_features
            sm = _log_uniform(n, *RESCALE_RANGE, gen)
            mlp.up_proj.weight.mul_(sm[:, None])
            mlp.down_proj.weight.div_(sm[None, :])
    if not gpt2:  # the final norm feeds lm_head (untied)
        s = hidden_factors()
        _scale_norm(model.model.norm, s)
        _divide_inputs(model.lm_head, s)
        factors.append(s)
    info["hidden_factor_range"] = [
        float(min(f.min() for f in factors)),
        float(max(f.max() for f in factors)),
    ]
    return info


@torch.no_grad()
def check_same_function(original, rescaled, windows: torch.Tensor, tol: float = 1e-3) -> float:
    """The largest absolute difference of the two models' logits on ``windows`` relative to the
    largest logit; raises when it exceeds ``tol`` (float32 rounding stays far below)."""
    a = original(windows[:, :-1]).logits
    b = rescaled(windows[:, :-1]).logits
    err = float((a - b).abs().max() / a.abs().max())
    if not err <= tol:
        raise RuntimeError(f"the rescaled model computes another function (rel. error {err:.2e})")
    return err
