"""Site kinds, paper positions and rules on the bundled examples: every P0..P7 and H1..H7."""
from __future__ import annotations

from pathlib import Path

import pytest

from dropcheck.analysis.load import load_target
from dropcheck.analysis.pipeline import audit_loaded
from dropcheck.records import Report

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _audit(example: str, **kwargs: object) -> Report:
    return audit_loaded(load_target(str(EXAMPLES / example), dict(kwargs)))


def _codes(report: Report, site_id: str) -> set[str]:
    return {f.rule for f in report.findings if f.dropout == site_id}


# position -> (site kind, rules on each block's dropout); the paper's Figure 2 and Table 1
BLOCK_EXPECTATIONS = {
    "P0": ("trunk.pre_bn", {"DC001"}),
    "P1": ("branch.pre_bn", {"DC001"}),
    "P2": ("branch.pre_bn", {"DC001"}),
    "P3": ("branch.pre_bn", {"DC001"}),
    "P4": ("branch.pre_bn", {"DC001"}),
    "P5": ("branch.guideline", set()),
    "P6": ("branch.guideline", set()),
    "P7": ("branch.post_weight", {"DC005"}),
}


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("position", sorted(BLOCK_EXPECTATIONS))
def test_preresnet_block_positions_are_classified_as_the_paper_labels_them(block: str, position: str) -> None:
    report = _audit("preresnet.py", position=position, block=block, blocks=(2, 1), widths=(16, 32))
    kind, codes = BLOCK_EXPECTATIONS[position]
    ids = ["stages.0.0.drop", "stages.0.1.drop", "stages.1.0.drop"]
    assert [s.id for s in report.dropouts] == ids
    for site in report.dropouts:
        assert site.site.value == kind, site
        assert site.paper_position == position, site
        assert _codes(report, site.id) == codes


def test_p0_dropout_reaches_the_block_bn_and_everything_downstream_on_the_trunk() -> None:
    report = _audit("preresnet.py", position="P0", blocks=(1, 1), widths=(8, 16))
    first = report.dropouts[0]
    # the trunk carries the dropout through every add: both operands depend on it, so none is a merge
    assert first.reaches[0] == "stages.0.0.bn1"
    assert "stages.1.0.bn1" in first.reaches and first.merge is None


def test_branch_dropout_reaches_only_the_bn_before_its_merge() -> None:
    report = _audit("preresnet.py", position="P4", blocks=(1, 1), widths=(8, 16))
    assert report.dropouts[0].reaches == ("stages.0.0.bn2",)
    assert report.dropouts[0].merge is not None


@pytest.mark.parametrize("head, kind, codes", [
    ("H3", "head.pre_gap", set()),
    ("H4", "head.pre_gap", set()),
    ("H5", "head.post_gap", {"DC002"}),
    ("H6", "head.logits", {"DC003"}),
])
def test_preresnet_head_positions(head: str, kind: str, codes: set[str]) -> None:
    report = _audit("preresnet.py", position="none", head_position=head)
    (site,) = report.dropouts
    assert (site.id, site.site.value, site.paper_position) == ("head_drop", kind, head)
    assert {f.rule for f in report.findings} == codes


@pytest.mark.parametrize("head, kind, codes", [
    ("H1", "head.pre_bn", {"DC001"}),
    ("H2", "head.pre_bn", {"DC001"}),
    ("H3", "head.pre_gap", set()),
    ("H4", "head.pre_gap", set()),
    ("H5", "head.post_gap", {"DC002"}),
    ("H6", "head.logits", {"DC003"}),
    ("H7", "head.logits", {"DC003"}),
])
def test_mobilenet_head_positions_h1_to_h7(head: str, kind: str, codes: set[str]) -> None:
    report = _audit("mobilenet_head.py", head_position=head)
    (site,) = report.dropouts
    assert (site.site.value, site.paper_position) == (kind, head)
    assert {f.rule for f in report.findings} == codes
    if head in ("H1", "H2"):
        assert site.reaches == ("head_bn",)


def test_mobilenet_without_dropout_has_no_sites_and_no_findings() -> None:
    report = _audit("mobilenet_head.py", head_position="none")
    assert report.dropouts == [] and report.findings == []


@pytest.mark.parametrize("position, kind, codes", [
    ("after_conv1", "branch.pre_bn", {"DC001"}),
    ("after_relu1", "branch.pre_bn", {"DC001"}),
    ("end", "branch.guideline", set()),
])
def test_resnet_v1_branch_positions(position: str, kind: str, codes: set[str]) -> None:
    report = _audit("resnet_v1.py", position=position)
    assert len(report.dropouts) == 3
    for site in report.dropouts:
        # V1 branches start with a weight layer: the paper's P labels (Figure 2) do not apply
        assert (site.site.value, site.paper_position) == (kind, None)
        assert _codes(report, site.id) == codes


def test_resnet_v1_dropout_after_the_add_is_trunk_until_the_last_block_where_it_is_the_head() -> None:
    report = _audit("resnet_v1.py", position="after_add")
    kinds = [(s.id, s.site.value) for s in report.dropouts]
    assert kinds == [("stages.0.0.drop", "trunk.pre_bn"), ("stages.1.0.drop", "trunk.pre_bn"),
                     ("stages.2.0.drop", "head.pre_gap")]
    assert _codes(report, "stages.2.0.drop") == set()


def test_densenet_concatenation_is_not_a_residual_merge() -> None:
    report = _audit("densenet.py")
    assert report.dropouts and all("DC001" in _codes(report, s.id) for s in report.dropouts)
    first = report.dropouts[0]
    assert first.merge is None and first.reaches[0] == "blocks.0.layers.1.norm1"
    assert report.dropouts[-1].reaches == ("norm",)


def test_functional_bug_is_always_on_and_the_declared_module_unused() -> None:
    report = _audit("functional_bug.py")
    by_id = {s.id: s for s in report.dropouts}
    assert by_id["/dropout"].always_on and by_id["/dropout"].site.value == "head.pre_gap"
    assert by_id["dropout"].site.value == "unused"
    assert {(f.rule, f.dropout) for f in report.findings} == {("DC006", "/dropout"), ("DC007", "dropout")}
    assert by_id["/dropout"].source is not None and by_id["/dropout"].source.file.endswith("functional_bug.py")


def test_transformer_without_batchnorm_gets_no_dc001_and_says_why() -> None:
    report = _audit("transformer.py")
    assert report.findings == []
    assert report.capture is not None and not report.capture.has_batchnorm
    assert any("no BatchNorm" in n for n in report.notes)
    attention = [s for s in report.dropouts if s.op == "scaled_dot_product_attention"]
    assert len(attention) == 2 and not any(s.always_on for s in attention)
    assert {s.site.value for s in report.dropouts} == {"other"}
