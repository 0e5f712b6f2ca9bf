"""Verdicts on real torchvision and timm models, each following from the model's own code."""
from __future__ import annotations

import pytest

from dropcheck.analysis.pipeline import audit_target
from dropcheck.records import Report


def _audit(spec: str, shape: tuple[int, ...] | None = None, **kwargs: object) -> Report:
    report = audit_target(spec, dict(kwargs), shape)
    assert report.status == "ok", report.error and report.error.one_line()
    return report


def _findings(report: Report) -> set[tuple[str, str]]:
    return {(f.rule, f.dropout) for f in report.findings}


def test_torchvision_densenet_dropout_reaches_the_next_layers_norm_through_concat() -> None:
    # _DenseLayer.forward: F.dropout(new_features, p=drop_rate, training=self.training), then the block
    # concatenates it with the earlier features and the next layer applies norm1 to the concatenation
    report = _audit("torchvision:densenet121", (1, 3, 64, 64), drop_rate=0.2)
    assert len(report.dropouts) == 58 and all(s.op == "dropout" for s in report.dropouts)
    first = report.dropouts[0]
    assert first.id == "features.denseblock1.denselayer1/dropout"
    assert first.reaches[0] == "features.denseblock1.denselayer2.norm1" and first.merge is None
    assert all(f.rule == "DC001" for f in report.findings) and len(report.findings) == 58
    assert first.source is not None and first.source.file == "torchvision/models/densenet.py"
    assert not any(s.always_on for s in report.dropouts)  # training=self.training is passed


@pytest.mark.parametrize("name, dropout_id", [
    # classifier = Sequential(Dropout(p=0.2), Linear) applied after avgpool + flatten
    ("efficientnet_b0", "classifier.0"),
    ("mobilenet_v2", "classifier.0"),
    # classifier = Sequential(Linear, Hardswish, Dropout, Linear) after avgpool + flatten
    ("mobilenet_v3_small", "classifier.2"),
    # forward: avgpool -> dropout -> flatten -> fc
    ("inception_v3", "dropout"),
    ("googlenet", "dropout"),
])
def test_torchvision_heads_drop_after_global_pooling(name: str, dropout_id: str) -> None:
    report = _audit(f"torchvision:{name}")
    site = next(s for s in report.dropouts if s.id == dropout_id)
    assert (site.site.value, site.paper_position) == ("head.post_gap", "H5")
    assert _findings(report) == {("DC002", dropout_id)}
    assert report.capture is not None and report.capture.device == "meta"


def test_inception_v3_default_input_is_299_from_its_weights_metadata() -> None:
    report = _audit("torchvision:inception_v3")
    assert report.input_shape == [1, 3, 299, 299]


def test_torchvision_vit_h_14_default_input_is_the_size_it_was_built_for() -> None:
    # its default weights (SWAG E2E) make a 518x518 model and crop 518, but weights=None builds
    # VisionTransformer(image_size=224), whose forward asserts the input size (benchmarks/zoo.py found it)
    report = _audit("torchvision:vit_h_14")
    assert report.input_shape == [1, 3, 224, 224]
    assert _audit("torchvision:vit_h_14", image_size=518).input_shape == [1, 3, 518, 518]


def test_efficientnet_stochastic_depth_is_reported_apart_from_dropout() -> None:
    # MBConv blocks with a residual apply StochasticDepth before the add
    report = _audit("torchvision:efficientnet_b0", (1, 3, 64, 64))
    assert report.stochastic_depth and {s.op for s in report.stochastic_depth} == {"StochasticDepth"}
    assert all(s.merge for s in report.stochastic_depth)
    assert not any(s.op == "StochasticDepth" for s in report.dropouts)


def test_googlenet_aux_head_dropout_is_between_linear_layers_after_a_4x4_pool() -> None:
    # InceptionAux: adaptive_avg_pool2d((4, 4)) -> conv -> flatten -> fc1 -> relu -> dropout(0.7) -> fc2
    report = _audit("torchvision:googlenet")
    aux = [s for s in report.dropouts if s.id.startswith("aux")]
    assert [s.id for s in aux] == ["aux1.dropout", "aux2.dropout"]
    assert all(s.site.value == "other" for s in aux)


def test_vgg_bn_classifier_dropouts_see_no_batchnorm_and_no_global_pool() -> None:
    # features end in MaxPool; avgpool is adaptive to 7x7 (not global); classifier is Linear-ReLU-Dropout x2
    report = _audit("torchvision:vgg11_bn", (1, 3, 64, 64))
    assert [(s.id, s.site.value) for s in report.dropouts] == [("classifier.2", "other"), ("classifier.5", "other")]
    assert report.findings == []


def test_torchvision_vit_has_no_batchnorm_and_attention_dropout_inside_multihead_attention() -> None:
    # LayerNorm only; nn.MultiheadAttention is a torch.nn leaf holding attention dropout
    report = _audit("torchvision:vit_b_16", dropout=0.1, attention_dropout=0.1)
    assert report.findings == []
    assert any("no BatchNorm" in n for n in report.notes)
    attention = [s for s in report.dropouts if s.op == "MultiheadAttention"]
    assert len(attention) == 12 and all(s.p == pytest.approx(0.1) for s in attention)


def test_torchvision_resnet50_has_no_dropout() -> None:
    report = _audit("torchvision:resnet50")
    assert report.dropouts == [] and report.findings == []


def test_timm_resnet18_drop_rate_is_functional_dropout_after_global_pool() -> None:
    # ResNet.forward_head: x = self.global_pool(x); x = F.dropout(x, p=float(self.drop_rate), training=...)
    report = _audit("timm:resnet18", (1, 3, 64, 64), drop_rate=0.2)
    assert [(s.id, s.site.value) for s in report.dropouts] == [("/dropout", "head.post_gap")]
    assert _findings(report) == {("DC002", "/dropout")}


def test_timm_resnet18_drop_block_sits_before_bn2_in_layer3_and_layer4() -> None:
    # BasicBlock: conv1 -> bn1 -> drop_block -> act1 -> conv2 -> bn2 (DropBlock only in layer3/4 by default)
    report = _audit("timm:resnet18", (1, 3, 64, 64), drop_block_rate=0.1)
    ids = [s.id for s in report.dropouts]
    assert ids == ["layer3.0.drop_block", "layer3.1.drop_block", "layer4.0.drop_block", "layer4.1.drop_block"]
    assert all(s.op == "DropBlock2d" and s.site.value == "branch.pre_bn" for s in report.dropouts)
    assert report.dropouts[0].reaches == ("layer3.0.bn2",)
    assert {f.rule for f in report.findings} == {"DC001"}


def test_timm_efficientnet_b0_head_dropout_and_drop_path() -> None:
    # EfficientNet.forward_head: global_pool -> F.dropout(drop_rate) -> classifier; blocks use DropPath
    report = _audit("timm:efficientnet_b0", (1, 3, 64, 64), drop_rate=0.2, drop_path_rate=0.1)
    assert _findings(report) == {("DC002", "/dropout")}
    assert report.stochastic_depth and {s.op for s in report.stochastic_depth} == {"DropPath"}


@pytest.mark.parametrize("name", ["convnext_tiny", "maxvit_tiny_tf_224"])
def test_timm_norm_mlp_head_dropout_after_global_pool_through_channels_last_layernorm(name: str) -> None:
    # NormMlpClassifierHead: global_pool -> LayerNorm2d (permute to (N, 1, 1, C), layer_norm, permute back)
    # -> flatten -> pre_logits -> drop -> fc: the permuted (1, 1, 1, 768) is still a pooled vector
    report = _audit(f"timm:{name}", None if name.startswith("maxvit") else (1, 3, 64, 64), drop_rate=0.2)
    site = next(s for s in report.dropouts if s.id == "head.drop")
    assert (site.site.value, site.paper_position) == ("head.post_gap", "H5")
    assert _findings(report) == {("DC002", "head.drop")}


def test_timm_vit_attention_dropout_is_gated_and_no_batchnorm() -> None:
    # Attention: F.scaled_dot_product_attention(dropout_p=self.attn_drop.p if self.training else 0.)
    report = _audit("timm:vit_tiny_patch16_224", drop_rate=0.1, attn_drop_rate=0.1, proj_drop_rate=0.1)
    assert report.findings == []  # in particular no DC006 and no DC007 for the fused attn_drop
    attention = [s for s in report.dropouts if s.op == "scaled_dot_product_attention"]
    assert len(attention) == 12 and not any(s.always_on for s in attention)


def test_timm_model_with_untraceable_blocks_uses_the_zoo_aware_tracer() -> None:
    # MobileVitBlock is registered with timm's notrace modules; its forward branches on shapes
    report = _audit("timm:mobilevit_xxs", (1, 3, 64, 64), drop_rate=0.1)
    assert report.capture is not None and report.capture.method == "zoo-aware"
    assert {o.type for o in report.opaque_regions} == {"MobileVitBlock"}
    assert _findings(report) == {("DC002", "head.drop")}  # ClassifierHead: pool -> drop -> fc
