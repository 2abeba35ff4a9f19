"""Tiny configurations of the model families whose structures
causalprune_fast.model.structures teaches Torch-Pruning (random init, nothing
downloaded): ``MODELS[name]() -> (model in eval mode, input shape)``."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn


def _seeded(build):
    def make():
        torch.manual_seed(0)
        model, shape = build()
        return model.eval(), shape

    make.__name__ = build.__name__
    return make


def _tv():
    return pytest.importorskip("torchvision")


def _timm():
    return pytest.importorskip("timm")


def _tv_swin(v2: bool):
    tvs = _tv().models.swin_transformer
    extra = {}
    if v2:
        extra = dict(block=tvs.SwinTransformerBlockV2, downsample_layer=tvs.PatchMergingV2)
    model = tvs.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=12,
        depths=[2, 1],
        num_heads=[2, 4],
        window_size=[4, 4],
        num_classes=5,
        **extra,
    )
    return model, (3, 32, 32)


@_seeded
def torchvision_swin():
    return _tv_swin(False)


@_seeded
def torchvision_swin_v2():
    return _tv_swin(True)


@_seeded
def timm_swin():
    model = _timm().create_model(
        "swin_tiny_patch4_window7_224",
        img_size=56,
        embed_dim=12,
        depths=(2, 1),
        num_heads=(2, 4),
        num_classes=5,
    )
    return model, (3, 56, 56)


@_seeded
def torchvision_maxvit():
    tm = _tv().models.maxvit
    model = tm.MaxVit(
        input_size=(32, 32),
        stem_channels=8,
        partition_size=2,
        block_channels=[8, 16],
        block_layers=[1, 1],
        head_dim=4,
        stochastic_depth_prob=0.0,
        num_classes=5,
    )
    return model, (3, 32, 32)


@_seeded
def timm_maxvit():
    model = _timm().create_model(
        "maxvit_tiny_tf_224",
        img_size=32,
        embed_dim=(8, 16),
        depths=(1, 1),
        stem_width=8,
        transformer_dim_head=4,
        num_classes=5,
    )
    return model, (3, 32, 32)


@_seeded
def levit():
    model = _timm().create_model(
        "levit_128s",
        img_size=32,
        embed_dim=(16, 24),
        key_dim=4,
        num_heads=(2, 3),
        depth=(1, 1),
        num_classes=5,
    )
    return model, (3, 32, 32)


@_seeded
def coat():
    model = _timm().create_model(
        "coat_tiny",
        img_size=32,
        embed_dims=[16, 16, 16, 16],
        serial_depths=[1, 1, 1, 1],
        parallel_depth=1,
        num_heads=8,
        num_classes=5,
    )
    return model, (3, 32, 32)


@_seeded
def coat_lite():
    model = _timm().create_model(
        "coat_lite_tiny",
        img_size=32,
        embed_dims=[16, 16, 16, 16],
        serial_depths=[1, 1, 1, 1],
        num_heads=8,
        num_classes=5,
    )
    return model, (3, 32, 32)


@_seeded
def shufflenet():
    sn = _tv().models.shufflenetv2
    model = sn.ShuffleNetV2([2, 2, 1], [8, 16, 32, 64, 96], num_classes=5)
    return model, (3, 32, 32)


MODELS = {
    f.__name__: f
    for f in (
        torchvision_swin,
        torchvision_swin_v2,
        timm_swin,
        torchvision_maxvit,
        timm_maxvit,
        levit,
        coat,
        coat_lite,
        shufflenet,
    )
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
