"""The ``layers`` filter of find_layers/score_model: names, regular expressions, callables and
lists (issue 10, item 3)."""

from __future__ import annotations

import re

import pytest
import torch.nn as nn

from causalprune_fast.model.discovery import find_layers


def net() -> nn.Module:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 3)
            self.conv2 = nn.Conv2d(4, 4, 3)

    m = nn.Module()
    m.stem = nn.Conv2d(3, 4, 3)
    m.layer1 = nn.Sequential(Block(), Block())
    m.features = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1))
    m.fc = nn.Linear(4, 2)
    return m


def names(layers) -> list[str]:
    return [layer.name for layer in find_layers(net(), layers)[0]]


def test_string_is_a_full_match_regular_expression():
    assert names(r"features\..*") == ["features.0", "features.2"]
    assert names("layer1.0.conv1") == ["layer1.0.conv1"]  # an exact name matches itself
    assert names(r"layer1\.\d\.conv2") == ["layer1.0.conv2", "layer1.1.conv2"]


def test_full_match_not_search():
    with pytest.raises(ValueError, match="matches no Conv/Linear layer"):
        names("conv1")  # a part of a name is not a match
    assert names(".*conv1") == ["layer1.0.conv1", "layer1.1.conv1"]


def test_compiled_callable_and_lists():
    assert names(re.compile(r"layer1\.1\..*")) == ["layer1.1.conv1", "layer1.1.conv2"]
    assert names(lambda n: n.endswith("2")) == ["layer1.0.conv2", "layer1.1.conv2", "features.2"]
    assert names(["fc", r"features\.0", lambda n: n == "stem"]) == ["stem", "features.0", "fc"]
    assert names(("fc",)) == ["fc"]


def test_invalid_regex_names_layers():
    with pytest.raises(ValueError, match=r"layers: 'features\.\(' is not a valid regular"):
        names(r"features.(")


@pytest.mark.parametrize("bad", [0, 1.5, [0], ["fc", None], b"fc", {"fc": 1}])
def test_other_types_name_layers(bad):
    with pytest.raises(ValueError, match="layers"):
        names(bad)


def test_empty_list_selects_nothing():
    with pytest.raises(ValueError, match="layers is an empty list"):
        names([])


def test_no_match_lists_nearest_names():
    with pytest.raises(ValueError, match="the nearest layer names are: layer1.0.conv2") as e:
        names("layer1.0.conv3")
    for near in ("layer1.0.conv1", "layer1.1.conv1", "layer1.1.conv2"):
        assert near in str(e.value)
    assert "features.0" not in str(e.value) and "stem" not in str(e.value)
