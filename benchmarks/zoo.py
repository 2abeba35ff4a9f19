"""Model zoo sweep: score, prune and rerun every model of a zoo, one subprocess per model.

    python benchmarks/zoo.py --models all --out benchmarks/results/cpu/zoo.json \
        --timeout 300 --memory-gb 10 --resume

For every model (random init, nothing downloaded) this records: the layers measured by
``cf.score_model`` beside the layers with weights of their own, the modules listed as
unsupported with their reasons, seconds, peak memory, and whether ``cf.prune(model, 0.3)`` ran
and the pruned model still runs (and still gives outputs of the same shape).

Models: every torchvision classification model, a dozen timm models and nine Hugging Face
transformers built from tiny configs (GPT-2 LM head, BERT sequence classifier; Llama, Qwen2,
Mistral, Phi-3, Gemma and GPT-NeoX LM heads; BART, an encoder-decoder). Each model runs in its
own subprocess under a memory cap (``RLIMIT_AS``) and a wall-clock timeout; the record is
written after every stage, so a model killed while pruning keeps its scoring result. The JSON
is rewritten after every model, and ``--resume`` skips the models it already holds, so a
partial sweep is usable. ``python benchmarks/make_results.py --zoo-only ...``
turns the JSON into the "Model zoo sweep" section of ``benchmarks/RESULTS.md``.

The test suite runs :func:`run_model` in-process on two tiny models (``tests/test_zoo.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # this checkout's package, not whichever one is installed
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from causalprune_fast.model.families import is_rmsnorm  # noqa: E402

#: Scoring settings of the sweep (small: the sweep measures coverage, not quality).
SETTINGS: dict[str, Any] = {
    "samples": 4,
    "max_samples_per_layer": 1024,
    "bins": 16,
    "progress": False,
}
PRUNE_RATIO = 0.3

#: timm models with their parameter counts in millions (only to order the sweep).
TIMM_MODELS: dict[str, float] = {
    "swin_tiny_patch4_window7_224": 28.3,
    "convnext_tiny": 28.6,
    "efficientnet_b0": 5.3,
    "deit_tiny_patch16_224": 5.7,
    "maxvit_tiny_tf_224": 30.9,
    "regnetx_002": 2.7,
    "mobilevit_xxs": 1.3,
    "resnet50d": 25.6,
    "vit_small_patch16_224": 22.1,
    "mixer_b16_224": 59.9,
    "levit_128s": 7.8,
    "coat_tiny": 5.5,
}
HF_MODELS = ("gpt2", "bert", "llama", "qwen2", "mistral", "phi3", "gemma", "gpt_neox", "bart")
HF_VOCAB = 512
HF_TOKENS = 16

#: Modules with weights that belong to a channel's group (pruned with the layer that feeds
#: them), not layers of their own.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.PReLU,
)


# ----------------------------------------------------------------------------- models
@dataclass
class ModelInput:
    """How a model is fed: an image shape, or token ids (``example_input`` + range)."""

    input_shape: tuple[int, ...] | None = None
    example_input: torch.Tensor | None = None
    input_range: tuple[float, float] = (-1.0, 1.0)
    extra: dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        """The input keywords of ``score_model`` / ``prune``."""
        kw: dict[str, Any] = {"input_range": self.input_range}
        if self.example_input is not None:
            kw["example_input"] = self.example_input
        return kw

    def shape(self) -> tuple[int, ...]:
        """One example's shape, without the batch dimension."""
        if self.example_input is not None:
            return tuple(self.example_input.shape[1:])
        assert self.input_shape is not None
        return self.input_shape

    def noise(self, seed: int = 1) -> torch.Tensor:
        """A batch of one random input for a plain forward pass."""
        g = torch.Generator().manual_seed(seed)
        lo, hi = self.input_range
        if self.example_input is not None and not self.example_input.is_floating_point():
            return torch.randint(int(lo), int(hi), self.example_input.shape, generator=g)
        return torch.rand((1, *self.shape()), generator=g) * (hi - lo) + lo


def torchvision_names() -> list[str]:
    """Every torchvision classification model."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def all_names(which: str) -> list[str]:
    """Qualified names (``source:name``) for ``torchvision``, ``timm``, ``hf``, ``all`` or a
    comma-separated list of names (qualified, or bare: torchvision, then timm, then hf)."""
    groups = {
        "hf": [f"hf:{n}" for n in HF_MODELS],
        "timm": [f"timm:{n}" for n in TIMM_MODELS],
    }
    if which in ("torchvision", "all"):
        groups["torchvision"] = [f"torchvision:{n}" for n in torchvision_names()]
    if which == "all":
        return groups["hf"] + groups["timm"] + groups["torchvision"]
    if which in groups:
        return groups[which]
    out = []
    for name in filter(None, (n.strip() for n in which.split(","))):
        out.append(name if ":" in name else _qualify(name))
    return out


def _qualify(name: str) -> str:
    if name in torchvision_names():
        return f"torchvision:{name}"
    if name in HF_MODELS:
        return f"hf:{name}"
    import timm

    if timm.is_model(name):
        return f"timm:{name}"
    raise ValueError(f"unknown model {name!r} (not in torchvision, timm or {HF_MODELS})")


def sweep_order(key: str) -> tuple[int, float]:
    """Sort key of the sweep: the Hugging Face models, then timm's (the cases the recent fixes
    are about: attention, Swin, MaxViT), then torchvision's; small models first within each,
    so that a sweep cut short covers as many models as possible."""
    return ({"hf": 0, "timm": 1}.get(key.partition(":")[0], 2), size_hint(key))


def size_hint(key: str) -> float:
    """Parameter count where it is known without building the model."""
    source, _, name = key.partition(":")
    if source == "hf":
        return 0.0
    if source == "timm":
        return TIMM_MODELS.get(name, float("inf")) * 1e6
    try:
        import torchvision

        return float(torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"])
    except Exception:
        return float("inf")


def _hf_model(name: str) -> tuple[nn.Module, dict[str, Any]]:
    import transformers as tf

    common = {"vocab_size": HF_VOCAB, "use_cache": False, "bos_token_id": 0, "eos_token_id": 0}
    if name == "gpt2":
        cfg = tf.GPT2Config(n_positions=64, n_embd=64, n_layer=2, n_head=4, **common)
        return tf.GPT2LMHeadModel(cfg), cfg.to_diff_dict()
    if name == "bert":
        cfg = tf.BertConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            num_labels=2,
            **common,
        )
        return tf.BertForSequenceClassification(cfg), cfg.to_diff_dict()
    # Decoders with rotary attention: 64 wide, 4 query heads (2 key/value heads where the family
    # has grouped-query attention), 128-wide MLP, 2 layers.
    rotary = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=64, pad_token_id=0,
                  **common)  # fmt: skip
    families = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 2}),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 2}),
        "mistral": (
            "MistralConfig",
            "MistralForCausalLM",
            {"num_key_value_heads": 2, "sliding_window": 8},
        ),
        "phi3": (
            "Phi3Config",
            "Phi3ForCausalLM",
            {"num_key_value_heads": 2, "original_max_position_embeddings": 64},
        ),
        "gemma": ("GemmaConfig", "GemmaForCausalLM", {"num_key_value_heads": 2, "head_dim": 24}),
        "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"rotary_pct": 0.25}),
    }
    if name in families:
        config_class, model_class, extra = families[name]
        cfg = getattr(tf, config_class)(**rotary, **extra)
        return getattr(tf, model_class)(cfg), cfg.to_diff_dict()
    if name == "bart":  # an encoder-decoder: the decoder reads the shifted input ids
        cfg = tf.BartConfig(
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            max_position_embeddings=64,
            vocab_size=HF_VOCAB,
            use_cache=False,
        )
        return tf.BartForConditionalGeneration(cfg), cfg.to_diff_dict()
    raise ValueError(f"unknown Hugging Face model {name!r}; known: {HF_MODELS}")


def build(key: str, input_shape: tuple[int, ...] | None = None) -> tuple[nn.Module, ModelInput]:
    """The randomly initialised model ``key`` (``source:name``) in eval mode, and its input.

    Image sizes: ``input_shape`` if given, else the model's own (``model.image_size`` of
    torchvision ViTs, 299 for inception_v3, timm's ``pretrained_cfg`` input size), else 224.
    """
    source, _, name = key.partition(":")
    torch.manual_seed(0)
    if source == "hf":
        model, config = _hf_model(name)
        tokens = HF_TOKENS if input_shape is None else int(input_shape[-1])
        inp = ModelInput(
            example_input=torch.zeros(1, tokens, dtype=torch.long),
            input_range=(0.0, float(HF_VOCAB)),
            extra={"config": {k: v for k, v in config.items() if _jsonable(v)}},
        )
        return model.eval(), inp
    if source == "torchvision":
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
        side = getattr(model, "image_size", None) or (299 if name == "inception_v3" else 224)
        shape = (3, int(side), int(side))
    elif source == "timm":
        import timm

        model = timm.create_model(name, pretrained=False)
        shape = tuple(int(s) for s in model.pretrained_cfg.get("input_size", (3, 224, 224)))
    else:
        raise ValueError(f"model key must be torchvision:, timm: or hf:NAME, got {key!r}")
    return model.eval(), ModelInput(input_shape=tuple(input_shape or shape))


def _jsonable(v: object) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


# ----------------------------------------------------------------------------- measures
def weighted_modules(model: nn.Module) -> tuple[list[str], list[str]]:
    """``(layers, norms)``: names of the modules with parameters of their own, split into
    norm-like group members (:data:`NORM_TYPES` and transformers' ``*RMSNorm``) and the rest
    ("layers with weights")."""
    layers, norms = [], []
    for name, module in model.named_modules():
        if next(iter(module.parameters(recurse=False)), None) is None:
            continue
        norm = isinstance(module, NORM_TYPES) or is_rmsnorm(module)  # transformers' RMSNorms
        (norms if norm else layers).append(name or "<root>")
    return layers, norms


def reason_kind(reason: str) -> str:
    """A reason without its particulars: parenthesised lists dropped, numbers as N, the first
    clause only (so that reasons of one kind count together)."""
    text = re.sub(r"\s*\([^)]*\)", "", reason).split(";")[0].strip()
    text = re.sub(r"\d+", "N", text)
    return text[:90]


def main_output(out: object) -> torch.Tensor | None:
    """The first tensor of a model's output (a tensor, tuple, list, dict or ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):  # ModelOutput is a dict too
        values = list(out.values())
    elif isinstance(out, list | tuple):
        values = list(out)
    else:
        values = list(getattr(out, "__dict__", {}).values())
    for v in values:
        t = main_output(v)
        if t is not None:
            return t
    return None


def first_line(e: BaseException) -> str:
    """``Type: first line of the message``, at most 300 characters."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def _stage(record: dict, key: str, flush: Callable[[], None]) -> Iterator[dict]:
    """Time one stage into ``record[key]``; an exception becomes its ``error`` field."""
    entry: dict[str, Any] = {"ok": False}
    record[key] = entry
    t0 = time.perf_counter()
    try:
        yield entry
        entry["ok"] = True
    except Exception as e:  # noqa: BLE001 - every failure is a result of the sweep
        entry["error"] = first_line(e)
        entry["memory"] = isinstance(e, MemoryError) or "can't allocate memory" in str(e)
        entry["traceback"] = traceback.format_exc(limit=-40)
    finally:
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        entry["peak_rss_mb"] = round(_peak_rss_mb(), 1)
        flush()


def account(unaccounted: list[str], extra: list[str]) -> tuple[list[str], list[str]]:
    """Pair the modules with weights that are not measured under their own name with the
    measured layers that are not modules: a layer measured inside a module in its place (the
    packed in-projection ``self_attention.in_proj`` of an ``nn.MultiheadAttention``, whose
    own weights those are) accounts for that module. Returns what is left of each list."""
    inside = {n for n in unaccounted if any(m.startswith(n + ".") for m in extra)}
    left = [m for m in extra if not any(m.startswith(n + ".") for n in inside)]
    return [n for n in unaccounted if n not in inside], left


def run_model(
    key: str,
    input_shape: tuple[int, ...] | None = None,
    settings: dict[str, Any] | None = None,
    ratio: float = PRUNE_RATIO,
    record_path: str | None = None,
) -> dict[str, Any]:
    """Build, score, prune and rerun one model; return its record (also written to
    ``record_path`` after every stage, so a killed run leaves what it had).

    Record fields: ``model``, ``input_shape``, ``params``; ``build``, ``score``, ``prune``,
    ``pruned_forward`` stages (each ``ok``, ``seconds``, ``peak_rss_mb``, ``error`` if any);
    ``layers_with_weights``, ``norms``, ``measured``, ``unsupported`` {name: reason},
    ``unsupported_kinds`` {kind: count}, ``unaccounted`` (layers with weights neither measured
    nor listed unsupported: must be empty), ``pruned`` (params, achieved ratio, output
    shapes).
    """
    import causalprune_fast as cf

    settings = dict(SETTINGS if settings is None else settings)
    record: dict[str, Any] = {"model": key, "settings": settings, "ratio": ratio}

    def flush() -> None:
        if record_path is not None:
            tmp = record_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(record, f, default=str)
            os.replace(tmp, record_path)

    model: nn.Module | None = None
    with _stage(record, "build", flush):
        model, inp = build(key, input_shape)
        record["input_shape"] = list(inp.shape())
        record["input_range"] = list(inp.input_range)
        record.update(inp.extra)
        record["params"] = sum(p.numel() for p in model.parameters())
        layers, norms = weighted_modules(model)
        record["layers_with_weights"], record["norms"] = len(layers), len(norms)
        with torch.no_grad():
            out = main_output(model(inp.noise()))
        record["output_shape"] = None if out is None else list(out.shape)
    if model is None or not record["build"]["ok"]:
        return record

    with _stage(record, "score", flush) as entry:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = cf.score_model(model, inp.input_shape, **inp.kwargs(), **settings)
        entry["warnings"] = len(caught)
        measured = list(scores.layers)
        record["measured"] = len(measured)
        record["score_timings"] = {
            k: round(v, 3) for k, v in scores.timings.items() if isinstance(v, int | float)
        }
        record["unsupported"] = dict(scores.unsupported)
        record["unsupported_kinds"] = dict(
            Counter(
                f"{_type_name(model, n)}: {reason_kind(r)}" for n, r in scores.unsupported.items()
            )
        )
        listed = set(measured) | set(scores.unsupported)
        unaccounted = [n for n in layers if n not in listed]
        extra = [n for n in measured if n not in set(layers)]
        record["unaccounted"], record["measured_not_weighted"] = account(unaccounted, extra)
        del scores

    with _stage(record, "prune", flush) as entry:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, report = cf.prune(
                model, ratio, inp.input_shape, sequential=False, **inp.kwargs(), **settings
            )
        entry["warnings"] = sorted(
            {
                str(w.message).splitlines()[0][:300]
                for w in caught
                if "than bins" not in str(w.message)
            }
        )[:5]
        record["pruned"] = {
            "params": sum(p.numel() for p in model.parameters()),
            "achieved": report.achieved,
            "groups": len(report.groups),
        }
    if not record["prune"]["ok"]:
        return record

    with _stage(record, "pruned_forward", flush):
        with torch.no_grad():
            out = main_output(model(inp.noise(seed=2)))
        shape = None if out is None else list(out.shape)
        record["pruned"]["output_shape"] = shape
        record["pruned"]["output_shape_kept"] = shape == record["output_shape"]
        record["pruned"]["finite"] = bool(out is None or torch.isfinite(out).all())
    return record


def _type_name(model: nn.Module, name: str) -> str:
    try:
        return type(model.get_submodule("" if name == "<root>" else name)).__name__
    except AttributeError:
        return "?"


# ----------------------------------------------------------------------------- sweep
def _limit_memory(limit_bytes: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return apply


def run_isolated(
    key: str, timeout: float, memory_gb: float, input_shape: tuple[int, ...] | None = None
) -> dict[str, Any]:
    """:func:`run_model` in a fresh subprocess under an address-space cap of ``memory_gb``
    and a wall-clock ``timeout``; adds ``status``, ``wall_s``, ``peak_rss_mb`` (the child's
    maximum resident set, from ``wait4``) and ``returncode``."""
    fd, record_path = tempfile.mkstemp(prefix="zoo-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", key, "--record", record_path]
    if input_shape:
        cmd += ["--input-shape", ",".join(map(str, input_shape))]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_limit_memory(int(memory_gb * (1 << 30))),
    )
    timed_out = False
    stderr_chunks: list[bytes] = []

    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - t0 > timeout:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the child's own process group
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=5)
    wall = time.monotonic() - t0
    try:
        with open(record_path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = {"model": key}
    finally:
        for p in (record_path, record_path + ".tmp"):
            with contextlib.suppress(OSError):
                os.remove(p)
    record["wall_s"] = round(wall, 1)
    record["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    record["returncode"] = proc.returncode
    record["limits"] = {"timeout_s": timeout, "memory_gb": memory_gb}
    stages = ("build", "score", "prune", "pruned_forward")
    unfinished = next((s for s in stages if not record.get(s, {}).get("ok")), None)
    if timed_out:
        record["status"] = f"timeout ({timeout:.0f} s) in {_running_stage(record)}"
    elif proc.returncode != 0:
        tail = b"".join(stderr_chunks).decode(errors="replace").strip().splitlines()[-3:]
        record["status"] = f"crashed (exit {proc.returncode}) in {_running_stage(record)}"
        record["stderr_tail"] = tail
    elif unfinished is None:
        record["status"] = "ok"
        if not record["pruned"].get("output_shape_kept", True):
            record["status"] = "ok, but the pruned model's output shape changed"
    elif unfinished in record and record[unfinished].get("memory"):
        record["status"] = f"out of memory ({memory_gb:g} GB cap) in {unfinished}"
    elif unfinished == "prune" and is_prune_refusal(record["prune"].get("error", "")):
        record["status"] = "scored; prune refused (unsupported by Torch-Pruning: see prune error)"
    else:
        record["status"] = f"{unfinished} failed"
    return record


def is_prune_refusal(error: str) -> bool:
    """Whether a prune error is prune()'s by-design refusal of a model Torch-Pruning cannot
    prune (raised before any change), not a failure."""
    return error.startswith("ValueError: prune(): ") and "pruned model fails" not in error


def _running_stage(record: dict) -> str:
    """The stage a killed worker was in: the first one without a record."""
    for s in ("build", "score", "prune", "pruned_forward"):
        if s not in record:
            return s
    return "the end"


def machine() -> dict[str, Any]:
    """CPU model (lscpu), cores, memory, versions and code revision."""
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    mem = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        mem = round(int(f.readline().split()[1]) / 1024**2, 1)
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("torchvision", "timm", "torch_pruning", "transformers"):
        with contextlib.suppress(ImportError):
            versions[mod] = __import__(mod).__version__
    import causalprune_fast as cf

    versions["causalprune_fast"] = cf.__version__
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem,
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
        "git_revision": rev,
    }


def _save(data: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def sweep(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run every requested model not already in ``args.out`` (with ``--resume``), one
    subprocess at a time, saving the JSON after each."""
    from tqdm import tqdm

    keys = sorted(all_names(args.models), key=sweep_order)
    data: dict[str, Any] = {"models": {}, "runs": []}
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            data = json.load(f)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    run = {"date": now, "command": command, **machine(), "models": []}
    data["runs"].append(run)
    data["settings"] = {**SETTINGS, "ratio": PRUNE_RATIO, "sequential": False}
    data["requested"] = sorted(set(data.get("requested", [])) | set(keys))
    todo = [k for k in keys if k not in data["models"]]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    t0 = time.monotonic()
    bar = tqdm(todo, desc="zoo", unit="model")
    for key in bar:
        if args.budget and time.monotonic() - t0 > args.budget:
            if not data.get("not_run"):
                bar.write(f"time budget of {args.budget:g} s spent: {key} and the rest not run")
            data.setdefault("not_run", {})[key] = f"the sweep's time budget ({args.budget:g} s)"
            continue
        bar.set_postfix_str(key)
        record = run_isolated(key, args.timeout, args.memory_gb)
        record["run"], record["revision"] = now, run["git_revision"]
        data["models"][key] = record
        data.get("not_run", {}).pop(key, None)
        run["models"].append(key)
        _save(data, args.out)
        bar.write(f"{key}: {record['status']} ({record['wall_s']} s, {record['peak_rss_mb']} MB)")
    _save(data, args.out)
    return data


def main(argv: list[str] | None = None) -> int:
    """Command line: the sweep, or (``--worker``) one model in this process."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="all", help="torchvision|timm|hf|all|NAME,NAME,...")
    p.add_argument("--out", default=os.path.join(HERE, "results", "cpu", "zoo.json"))
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    p.add_argument("--memory-gb", type=float, default=10.0, help="address-space cap per model")
    p.add_argument("--resume", action="store_true", help="skip models already in --out")
    p.add_argument(
        "--budget", type=float, default=0.0, help="stop starting models after this many seconds"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--record", help=argparse.SUPPRESS)
    p.add_argument("--input-shape", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        shape = tuple(int(s) for s in args.input_shape.split(",")) if args.input_shape else None
        run_model(args.worker, shape, record_path=args.record)
        return 0
    command = "python benchmarks/zoo.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data = sweep(args, command)
    done = [r for r in data["models"].values() if r.get("status") == "ok"]
    print(f"{len(done)} of {len(data['models'])} models scored, pruned and rerun: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
