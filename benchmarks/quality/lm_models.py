"""Data, models, training and evaluation of the language-model quality study (``lm_study.py``).

Text: the ``.py`` files of Python's standard library (``sysconfig.get_paths()["stdlib"]``),
read as bytes (a vocabulary of 256), in one fixed sorted list. Left out, so that the corpus is
the same on every machine with the same Python version: ``site-packages``, the test suites
(``test``, ``tests``, ``idle_test`` folders) and the build's ``_sysconfigdata_*`` and
``config-*`` files. Every tenth file of the sorted list (index 0, 10, 20, ...) is held out;
the others are the training text. Each split is its files' bytes joined by a newline.

Models are built from configs with random weights (seeded), nothing downloaded:

- ``llama``: ``LlamaForCausalLM``, hidden 128, 4 layers, 8 query heads sharing 4 key/value
  heads (grouped-query attention), head dim 16, MLP width 384, rotary embeddings.
- ``gpt2``: ``GPT2LMHeadModel``, hidden 128, 4 layers, 8 heads (head dim 16), MLP width 512,
  tied input/output embeddings, no dropout.
"""

from __future__ import annotations

import hashlib
import math
import os
import sysconfig

import torch
import torch.nn.functional as F

CONTEXT = 128  # positions of a training / evaluation window
# llama: grouped-query attention (SIZES' key/value heads); llama-mha: the same model with one
# key/value head per query head (global pruning of the grouped one is refused, README)
MODELS = ("llama", "gpt2", "llama-mha")
DEFAULT_MODELS = ("llama", "gpt2")
TRAIN = dict(
    steps=300,
    batch_size=16,
    lr=3e-3,
    warmup=30,
    min_lr_fraction=0.1,
    weight_decay=0.01,
    betas=(0.9, 0.95),
    clip=1.0,
    optimizer="AdamW",
)
FINETUNE = dict(steps=40, batch_size=16, lr=1e-3, weight_decay=0.0, clip=1.0, optimizer="AdamW")
EVAL = dict(windows=128, batch_size=32)  # 128 windows x 128 predicted bytes, fixed
CALIBRATION = dict(windows=16, seed=12345)  # data-using references: 16 x 128 training bytes
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_files(root: str | None = None) -> list[str]:
    """The corpus's files, relative to the standard library's folder, sorted."""
    root = root or sysconfig.get_paths()["stdlib"]
    out = []
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        dirs[:] = sorted(
            d for d in dirs if d not in _SKIP_DIRS and not (rel == "." and d.startswith("config-"))
        )
        for f in files:
            if f.endswith(".py") and not f.startswith("_sysconfigdata_"):
                out.append(os.path.normpath(os.path.join(rel, f)))
    return sorted(out)


class Corpus:
    """The training and held-out bytes (uint8 tensors) and how they were made."""

    def __init__(self, root: str | None = None, max_files: int | None = None):
        root = root or sysconfig.get_paths()["stdlib"]
        files = stdlib_files(root)
        if max_files is not None:  # --smoke: a small deterministic subset, same split rule
            files = files[:max_files]
        if len(files) < 10:
            raise RuntimeError(f"only {len(files)} .py files under {root}: no corpus")
        parts: dict[str, list[bytes]] = {"train": [], "heldout": []}
        digest = hashlib.sha256()
        for i, f in enumerate(files):
            with open(os.path.join(root, f), "rb") as fh:
                data = fh.read()
            digest.update(f.encode() + b"\0" + data)
            parts["heldout" if i % 10 == 0 else "train"].append(data)
        self.train = torch.frombuffer(bytearray(b"\n".join(parts["train"])), dtype=torch.uint8)
        self.heldout = torch.frombuffer(bytearray(b"\n".join(parts["heldout"])), dtype=torch.uint8)
        self.info = {
            "root": root,
            "files": len(files),
            "heldout_files": len(parts["heldout"]),
            "train_bytes": len(self.train),
            "heldout_bytes": len(self.heldout),
            "sha256": digest.hexdigest(),
            "rule": "sorted .py files of the stdlib folder (no site-packages, test suites, "
            "_sysconfigdata_*, config-*); file i held out when i % 10 == 0",
        }

    def batch(self, gen: torch.Generator, batch_size: int) -> torch.Tensor:
        """``[batch_size, CONTEXT + 1]`` random training windows (long), drawn with ``gen``."""
        starts = torch.randint(0, len(self.train) - CONTEXT - 1, (batch_size,), generator=gen)
        return torch.stack([self.train[s : s + CONTEXT + 1] for s in starts.tolist()]).long()

    def heldout_windows(self, windows: int) -> torch.Tensor:
        """``[windows, CONTEXT + 1]`` held-out windows at evenly spaced fixed offsets."""
        step = (len(self.heldout) - CONTEXT - 1) // windows
        starts = [i * step for i in range(windows)]
        return torch.stack([self.heldout[s : s + CONTEXT + 1] for s in starts]).long()

    def calibration(self) -> torch.Tensor:
        """The data-using references' calibration windows, from the training split."""
        gen = torch.Generator().manual_seed(CALIBRATION["seed"])
        return self.batch(gen, CALIBRATION["windows"])


SIZES = {  # (hidden, layers, query heads, key/value heads, Llama MLP width); head dim 16
    "small": (128, 4, 8, 4, 384),
    "tiny": (32, 2, 2, 1, 64),  # --smoke only
}


def build_model(name: str, seed: int, size: str = "small") -> torch.nn.Module:
    """A fresh model of kind ``name`` (``MODELS``) with weights drawn from ``seed``."""
    import transformers

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {list(MODELS)}")
    hidden, layers, heads, kv_heads, inner = SIZES[size]
    torch.manual_seed(seed)
    if name == "llama-mha":
        kv_heads = heads
    if name.startswith("llama"):
        config = transformers.LlamaConfig(
            vocab_size=256,
            hidden_size=hidden,
            intermediate_size=inner,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=hidden // heads,
            max_position_embeddings=CONTEXT,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            tie_word_embeddings=False,
        )
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.GPT2Config(
            vocab_size=256,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=CONTEXT,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = transformers.GPT2LMHeadModel(config)
    model.config.use_cache = False
    return model.eval()


def lm_loss(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy (nats per byte) of ``[B, T + 1]`` windows."""
    logits = model(windows[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), windows[:, 1:].reshape(-1))


def fit(model, corpus: Corpus, cfg: dict, seed: int) -> list[float]:
    """AdamW on random training windows drawn with ``seed`` (the same batches for the same
    seed), linear warm-up then cosine decay where ``cfg`` has ``warmup``; returns the losses."""
    gen = torch.Generator().manual_seed(seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg["weight_decay"]},
            {"params": other, "weight_decay": 0.0},
        ],
        lr=cfg["lr"],
        betas=cfg.get("betas", (0.9, 0.999)),
    )
    steps, warmup = cfg["steps"], cfg.get("warmup", 0)
    floor = cfg.get("min_lr_fraction", 1.0)

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg["lr"] * (step + 1) / warmup
        if floor >= 1.0:
            return cfg["lr"]
        t = (step - warmup) / max(1, steps - warmup)
        return cfg["lr"] * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))

    losses = []
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = lm_loss(model, corpus.batch(gen, cfg["batch_size"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
        opt.step()
        losses.append(loss.item())
    opt.zero_grad(set_to_none=True)
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, batch_size: int = EVAL["batch_size"]) -> float:
    """Held-out loss in nats per byte over ``windows`` (every window the same length)."""
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch_size):
        w = windows[i : i + batch_size]
        total += float(lm_loss(model, w)) * len(w)
    return total / len(windows)


def param_count(model) -> int:
    """Distinct parameters (tied weights once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
