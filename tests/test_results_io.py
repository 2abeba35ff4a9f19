"""CausalScores.save/load/plot/with_direction on bad input (issue 11, item 8): clear errors
naming the path or the argument, nothing left behind, matplotlib's state left as found."""

from __future__ import annotations

import json
import os

import pytest
import torch

from causalprune_fast.model.channel_members import Member
from causalprune_fast.results.causal_scores import CausalScores
from causalprune_fast.results.layer_scores import LayerScores


def small_scores() -> CausalScores:
    """Two layers, the second consuming the first's channels: no scoring needed."""

    def layer(name, c_out, c_in, seed):
        gen = torch.Generator().manual_seed(seed)
        return LayerScores(
            name=name,
            kind="Conv2d",
            incoming=torch.rand(c_out, generator=gen, dtype=torch.float64),
            outgoing=torch.rand(c_in, generator=gen, dtype=torch.float64),
            sensitivity=1.5,
            response="output",
            response_reason=None,
            samples=64,
            input_units=c_in,
            groups=1,
            taps="all",
        )

    layers = {"a": layer("a", 4, 3, 0), "b": layer("b", 5, 4, 1)}
    r4, r5 = tuple(range(4)), tuple(range(5))
    groups = {
        "a": [Member("a", "producer", r4, r4), Member("b", "consumer", r4, r4)],
        "b": [Member("b", "producer", r5, r5)],
    }
    config = {"direction": "in", "reduction": "sum", "bins": 4, "mode": "local"}
    return CausalScores(layers, groups, config)


def write_with_metadata(path, meta_text: str | None) -> None:
    from safetensors.torch import save_file

    metadata = None if meta_text is None else {"causalprune": meta_text}
    save_file({"x": torch.zeros(2)}, str(path), metadata=metadata)


def valid_meta(tmp_path) -> dict:
    path = tmp_path / "ok.safetensors"
    small_scores().save(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["causalprune"])


def test_save_load_round_trip_leaves_no_temporary_file(tmp_path):
    scores = small_scores()
    path = tmp_path / "s.safetensors"
    scores.save(path)
    assert os.listdir(tmp_path) == ["s.safetensors"]
    loaded = CausalScores.load(str(path))
    for name in scores:
        torch.testing.assert_close(loaded[name], scores[name])


def test_save_into_a_directory_raises_and_leaves_nothing(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        small_scores().save(folder)
    assert os.listdir(tmp_path) == ["out"] and os.listdir(folder) == []


@pytest.mark.parametrize("name", ["s.png", "s.PDF", "s.svg"])
def test_save_to_an_image_name_is_refused(tmp_path, name):
    with pytest.raises(ValueError, match="safetensors format, not as a"):
        small_scores().save(tmp_path / name)
    assert os.listdir(tmp_path) == []


def test_save_into_a_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        small_scores().save(tmp_path / "nope" / "s.safetensors")
    assert os.listdir(tmp_path) == []


def test_save_failure_midway_removes_the_temporary_file(tmp_path, monkeypatch):
    import safetensors.torch

    def failing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    with pytest.raises(KeyboardInterrupt):
        small_scores().save(tmp_path / "s.safetensors")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [None, 3, ""])
def test_save_and_load_reject_a_bad_path_argument(bad):
    with pytest.raises((TypeError, ValueError), match="path"):
        small_scores().save(bad)
    with pytest.raises((TypeError, ValueError, FileNotFoundError), match="path|scores file"):
        CausalScores.load(bad)


def test_load_missing_file_names_the_path(tmp_path):
    path = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        CausalScores.load(path)


def test_load_a_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        CausalScores.load(tmp_path)


def test_load_a_file_that_is_not_safetensors(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ValueError, match="junk.safetensors.*not a valid.*not a safetensors"):
        CausalScores.load(path)


@pytest.mark.parametrize(
    "meta_text,match",
    [
        (None, "no 'causalprune' metadata"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON list, not an object"),
        (json.dumps({"format": 99}), "unsupported format version 99"),
        (json.dumps({"format": 1}), "missing entry.*config"),
    ],
)
def test_load_bad_metadata_is_one_clear_value_error(tmp_path, meta_text, match):
    path = tmp_path / "bad.safetensors"
    write_with_metadata(path, meta_text)
    with pytest.raises(ValueError, match="bad.safetensors.*not a valid causalprune_fast") as e:
        CausalScores.load(path)
    assert e.match(match)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m["layers"]["a"].pop("kind"), "kind"),
        (lambda m: m["groups"].pop("b"), "groups of layer"),
        (lambda m: m["groups"]["a"][0].pop("role"), "role"),
        (lambda m: m.__setitem__("layers", [1]), "AttributeError"),
        (lambda m: m["layers"].__setitem__("zzz", m["layers"]["a"]), "layer/zzz/incoming"),
    ],
)
def test_load_metadata_with_missing_or_broken_entries(tmp_path, edit, match):
    meta = valid_meta(tmp_path)
    edit(meta)
    path = tmp_path / "broken.safetensors"
    from safetensors.torch import save_file

    good = CausalScores.load(tmp_path / "ok.safetensors")
    tensors = {
        f"layer/{n}/{k}": getattr(s, k).contiguous()
        for n, s in good.layers.items()
        for k in ("incoming", "outgoing")
    }
    save_file(tensors, str(path), metadata={"causalprune": json.dumps(meta)})
    with pytest.raises(ValueError, match="broken.safetensors.*not a valid") as e:
        CausalScores.load(path)
    assert e.match(match)


def test_with_direction_validates_its_arguments():
    scores = small_scores()
    with pytest.raises(ValueError, match="direction must be"):
        scores.with_direction("up")
    with pytest.raises(ValueError, match="direction must be"):
        scores.with_direction(None)
    with pytest.raises(ValueError, match="reduction must be"):
        scores.with_direction("in", "median")
    assert scores.with_direction("both", "max").config["reduction"] == "max"


# ----------------------------------------------------------------------------- plot


@pytest.fixture
def plt():
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    yield plt
    plt.close("all")
    assert matplotlib.get_backend() == backend


def test_plot_to_a_path_leaves_matplotlib_as_found(tmp_path, plt):
    import matplotlib

    original = matplotlib.get_backend()
    plt.switch_backend("pdf")  # a backend of the user's choosing, not the Agg a plot may want
    try:
        figures = plt.get_fignums()
        rc = dict(matplotlib.rcParams)
        fig = small_scores().plot(tmp_path / "fig.png")
        assert (tmp_path / "fig.png").stat().st_size > 1000
        assert matplotlib.get_backend() == "pdf"
        assert plt.get_fignums() == figures  # nothing left open
        assert dict(matplotlib.rcParams) == rc
        assert fig.axes and fig.axes[0].get_title().endswith("per layer")
    finally:
        plt.switch_backend(original)


def test_plot_into_given_axes_does_not_close_them(tmp_path, plt):
    fig, ax = plt.subplots()
    returned = small_scores().plot(tmp_path / "fig.png", ax=ax)
    assert returned is fig and plt.fignum_exists(fig.number)
    assert len(ax.patches) + len(ax.lines) > 0  # drawn into the given axes
    assert (tmp_path / "fig.png").exists()


def test_plot_without_path_returns_an_open_pyplot_figure(plt):
    before = set(plt.get_fignums())
    fig = small_scores().plot()
    assert set(plt.get_fignums()) - before == {fig.number}


def test_plot_argument_errors(tmp_path, plt):
    before = plt.get_fignums()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        small_scores().plot(tmp_path / "nope" / "fig.png")
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        small_scores().plot(ax="left")
    with pytest.raises(TypeError, match="path must be"):
        small_scores().plot(42)
    assert plt.get_fignums() == before
