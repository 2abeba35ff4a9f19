"""Measurements and data-free repairs of a pruned GPT-2 for ``lm_gpt2_diagnosis.py``: LayerNorm
inputs, each MLP neuron's mean output (on text, on noise, or from the weights alone), and
folding the mean of removed input channels into the biases of the layers that read them.

``removed`` everywhere is what ``lm_gpt2_diagnosis.prune`` returns: {kind: {root layer's name:
removed indices}}, the hidden size's indices being those of the residual stream.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lm_criteria as C  # noqa: E402
import lm_diagnostics as D  # noqa: E402
import lm_models as M  # noqa: E402


def mlp_input_means(model, windows) -> list[torch.Tensor]:
    """Per GPT-2 block, the mean of each MLP neuron's output (``mlp.c_proj``'s input), as
    ``lm_diagnostics`` measures it, in block order."""
    means = D.mlp_input_means(model, windows)
    return [means[i] for i in range(len(means))]


@torch.no_grad()
def gaussian_mlp_means(model) -> list[torch.Tensor]:
    """Per GPT-2 block, each MLP neuron's mean output when the normalised input of ``ln_2`` is
    standard normal and independent per dim (the maximum-entropy law with a LayerNorm's
    per-token mean 0 and variance 1), from the weights alone: the pre-activation is normal
    with mean ``b + beta @ W`` and variance ``sum_i (gamma_i W_ij)^2``, and
    ``E[z Phi(z)] = mu Phi(mu / s) + sigma^2 phi(mu / s) / s``, ``s = sqrt(1 + sigma^2)``."""
    out = []
    normal = torch.distributions.Normal(0.0, 1.0)
    for b in model.transformer.h:
        w, g, beta = b.mlp.c_fc.weight.double(), b.ln_2.weight.double(), b.ln_2.bias.double()
        mu = b.mlp.c_fc.bias.double() + beta @ w
        var = (g[:, None] ** 2 * w**2).sum(0)
        s = (1 + var).sqrt()
        out.append(mu * normal.cdf(mu / s) + var * normal.log_prob(mu / s).exp() / s)
    return out


def hidden_removed(removed: dict) -> list[int]:
    """The residual-stream dims that ``prune`` removed (none when the hidden size was kept)."""
    return next(iter(removed.get("hidden", {}).values()), [])


@torch.no_grad()
def compensate_mlp(pruned, original, removed: dict, means: list) -> None:
    """Add each removed MLP neuron's mean output times its ``c_proj`` row (restricted to the
    kept hidden dims) to ``c_proj``'s bias."""
    gone = set(hidden_removed(removed))
    kept = [d for d in range(original.config.n_embd) if d not in gone]
    for i, (b0, b1) in enumerate(zip(original.transformer.h, pruned.transformer.h, strict=True)):
        idx = removed.get("mlp", {}).get(f"transformer.h.{i}.mlp.c_fc", [])
        if idx:
            w = b0.mlp.c_proj.weight.double()[idx][:, kept]  # Conv1D: [in = neurons, out]
            b1.mlp.c_proj.bias.add_((means[i][idx] @ w).float())


@torch.no_grad()
def ln_inputs(model, windows) -> dict:
    """Every LayerNorm's input (``[tokens, width]``, double) on ``windows``."""
    seen, hooks = {}, []
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.LayerNorm):

            def hook(mod, args, n=n):
                seen[n] = args[0].reshape(-1, args[0].shape[-1]).double()

            hooks.append(m.register_forward_pre_hook(hook))
    try:
        model(windows)
    finally:
        for h in hooks:
            h.remove()
    return seen


def noise_windows(n: int = 32, lo: int = 0, hi: int = 256) -> torch.Tensor:
    """``[n, CONTEXT]`` uniformly random token ids in ``[lo, hi)``: the method's
    maximum-entropy input (the whole byte vocabulary by default)."""
    return torch.randint(lo, hi, (n, M.CONTEXT), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def input_means(model, windows) -> dict:
    """The mean input channel of every GPT-2 ``Conv1D`` (name -> ``[in]``, double)."""
    means, hooks = {}, []
    for n, m in model.named_modules():
        if C.is_conv1d(m) and "lm_head" not in n:

            def hook(mod, args, out, n=n):
                means[n] = args[0].reshape(-1, args[0].shape[-1]).double().mean(0)

            hooks.append(m.register_forward_hook(hook))
    try:
        model(windows)
    finally:
        for h in hooks:
            h.remove()
    return means


def removed_io(original, removed: dict, name: str) -> tuple[list[int], list[int]]:
    """(removed input channels, kept output channels) of GPT-2 layer ``name``."""
    hid = hidden_removed(removed)
    block, layer = name.rsplit(".", 2)[0], name.split(".", 3)[-1]
    heads = removed.get("heads", {}).get(f"{block}.attn.c_proj", [])
    mlp = removed.get("mlp", {}).get(f"{block}.mlp.c_fc", [])
    e = original.config.n_embd
    in_rm, out_rm = {
        "attn.c_attn": (hid, [i + k * e for k in range(3) for i in heads]),
        "attn.c_proj": (heads, hid),
        "mlp.c_fc": (hid, mlp),
        "mlp.c_proj": (mlp, hid),
    }[layer]
    width = dict(original.named_modules())[name].weight.shape[1]
    return list(in_rm), [o for o in range(width) if o not in set(out_rm)]


@torch.no_grad()
def fold_removed_inputs(pruned, original, removed: dict, means: dict, layers: str) -> None:
    """Add, for every ``Conv1D`` (``layers="hidden"``: only those reading the residual stream),
    each removed input channel's mean times its weight row to the layer's bias, so the kept
    outputs keep their mean (the queries' share scaled as ``keep_attention_scale`` did)."""
    mods0, mods1 = dict(original.named_modules()), dict(pruned.named_modules())
    for name, mu in means.items():
        if layers == "hidden" and not name.endswith(("c_attn", "c_fc")):
            continue
        in_rm, out_kept = removed_io(original, removed, name)
        if not in_rm:
            continue
        delta = mu[in_rm] @ mods0[name].weight.double()[in_rm][:, out_kept]
        if name.endswith("c_attn"):
            a = mods1[name.rsplit(".", 1)[0]]
            third = a.split_size
            delta[:third] *= (a.head_dim / mods0[name.rsplit(".", 1)[0]].head_dim) ** 0.5
        mods1[name].bias.add_(delta.float())
