"""score_model on real networks at the default settings (random init, 224 x 224 inputs),
with the time split into forward pass, capture (response + sampling), binning and MI, and the
work done as pair-samples (sum over layers of samples x measured pairs).

    pytest benchmarks/bench_models.py --benchmark-json=models.json
"""

from __future__ import annotations

import pytest
import torch
from conftest import SMOKE

import causalprune_fast as cf
from causalprune_fast.scoring.plan import DEFAULT_EXAMPLES, DEFAULT_SAMPLES_PER_LAYER

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
SHAPE = (3, 32, 32) if SMOKE else (3, 224, 224)
EXAMPLES = 4 if SMOKE else DEFAULT_EXAMPLES
SAMPLES_PER_LAYER = 256 if SMOKE else DEFAULT_SAMPLES_PER_LAYER

MODELS = {
    "resnet18": ("torchvision", "resnet18"),
    "resnet50": ("torchvision", "resnet50"),
    "mobilenet_v3_small": ("torchvision", "mobilenet_v3_small"),
    "vit_base_patch16_224": ("timm", "vit_base_patch16_224"),
}


def _model(name: str) -> torch.nn.Module:
    source, arch = MODELS[name]
    if source == "timm":
        timm = pytest.importorskip("timm")
        kwargs = {"img_size": SHAPE[1], "patch_size": 8} if SMOKE else {}
        return timm.create_model(arch, pretrained=False, **kwargs)
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.get_model(arch, weights=None)


def pair_samples(scores: cf.CausalScores) -> int:
    """Pair-samples of the whole run: per layer, samples x in-group (input, output) pairs."""
    total = 0
    for s in scores.layers.values():
        total += s.samples * s.input_units * len(s.incoming) // s.groups
    return total


@pytest.mark.benchmark(group="score_model, default settings")
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.filterwarnings("ignore:.*fewer samples than bins")
def test_score_model(benchmark, name):
    torch.manual_seed(0)
    model = _model(name).to(DEVICE).eval()
    result = {}

    def run():
        result["scores"] = cf.score_model(
            model, SHAPE, examples=EXAMPLES, samples_per_layer=SAMPLES_PER_LAYER, progress=False
        )

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    scores = result["scores"]
    stages = {"forward": scores.timings.get("forward", 0.0)}
    for key in ("capture", "binning", "mi"):
        stages[key] = sum(s.timings.get(key, 0.0) for s in scores.layers.values())
    work = pair_samples(scores)
    benchmark.extra_info.update(
        model=name,
        device=DEVICE,
        input_shape=list(SHAPE),
        layers=len(scores.layers),
        pair_samples=work,
        stages_s=stages,
        total_s=scores.timings.get("total"),
        mi_pair_samples_per_s=work / stages["mi"] if stages["mi"] else None,
        per_layer_ms={n: round(1e3 * sum(s.timings.values()), 1) for n, s in scores.layers.items()},
        per_layer_samples={n: s.samples for n, s in scores.layers.items()},
    )
