"""A rule's page is its definition and its test (style guide §3).

Bad example: a finding with the rule's code on the site named by `example-dropout`.
Good example: no finding at all. The front matter says where a rule fires and what fix does
with it; the engine and the fixer read it, and the tests below fail where they disagree.
"""
from __future__ import annotations

import ast
import pathlib
import re
from dataclasses import replace

import pytest
import torch
import torch.fx
from torch import nn

from dropcheck.analysis.catalog import get_rule, load_rules, moved_by_fix
from dropcheck.analysis.check import CONDITIONS, MESSAGE_FIELDS, run_rules
from dropcheck.analysis.load import load_target
from dropcheck.analysis.pipeline import audit_loaded
from dropcheck.fixer.pipeline import fix_target
from dropcheck.records import Report, Rule, Severity, Site, SiteKind

RULES = load_rules()
REPO = pathlib.Path(__file__).resolve().parents[1]


def _build(rule: Rule, which: str, tmp_path: pathlib.Path) -> tuple[nn.Module, torch.Tensor]:
    """Exec one example in a fresh namespace, from a real file so source lines resolve."""
    source = rule.example_bad if which == "bad" else rule.example_good
    path = tmp_path / f"{rule.code.lower()}_{which}.py"
    path.write_text(source, encoding="utf-8")
    namespace = {"__name__": f"dropcheck_rule_example_{rule.code.lower()}_{which}", "__file__": str(path)}
    exec(compile(source, str(path), "exec"), namespace)
    model_class = namespace["Model"]
    torch.manual_seed(0)
    return model_class(), torch.randn(*model_class.input_shape)


def _audit(model: nn.Module, example_input: torch.Tensor) -> Report:
    import dropcheck

    report = dropcheck.audit(model, example_input)
    assert report.status == "ok", report.error.one_line() if report.error else report.status
    return report


def _summary(report: Report) -> list[tuple[str, str]]:
    return [(finding.rule, finding.dropout) for finding in report.findings]


@pytest.mark.parametrize("which", ["bad", "good"])
@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.code)
def test_example_builds_runs_in_both_modes_and_traces(rule: Rule, which: str, tmp_path: pathlib.Path) -> None:
    model, example_input = _build(rule, which, tmp_path)
    assert example_input.shape[0] >= 2  # BatchNorm needs a batch in train mode
    with torch.no_grad():
        assert model.train()(example_input).shape[0] == example_input.shape[0]
        assert model.eval()(example_input).shape[0] == example_input.shape[0]
    assert isinstance(torch.fx.symbolic_trace(model), torch.fx.GraphModule)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.code)
def test_bad_example_is_flagged_on_the_named_dropout(rule: Rule, tmp_path: pathlib.Path) -> None:
    report = _audit(*_build(rule, "bad", tmp_path))
    assert (rule.code, rule.example_dropout) in _summary(report)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.code)
def test_good_example_has_no_findings(rule: Rule, tmp_path: pathlib.Path) -> None:
    report = _audit(*_build(rule, "good", tmp_path))
    assert rule.code not in {finding.rule for finding in report.findings}
    assert report.findings == [], _summary(report)


@pytest.mark.parametrize("rule", [r for r in RULES if r.fix_action != "none"], ids=lambda r: r.code)
def test_fixed_bad_example_is_clean_and_keeps_eval_outputs(rule: Rule, tmp_path: pathlib.Path) -> None:
    # a page with `fix-action: none` (DC007: fix cannot know where an unused dropout was meant to go) is left out
    import dropcheck

    model, example_input = _build(rule, "bad", tmp_path)
    result = dropcheck.fix(model, example_input)
    assert result.ok, [c for c in result.checks if not c.ok] + result.unfixable
    assert any(c.rule == rule.code for c in result.changes)
    after = _audit(result.model, example_input)
    assert not any(f.rule == rule.code for f in after.findings)
    assert next(c for c in result.checks if c.name == "eval outputs").ok


# --- the pages and the engine agree ---------------------------------------------------------------

# Situations a synthetic site can be in -> the pages' `fires-when` conditions it meets, in the words
# of rule_page's docstring. "site-kind" (a live dropout) is added where the dropout is live.
SITUATIONS: dict[str, set[str]] = {
    "plain": set(),
    "reaches a BatchNorm": {"reaches-batchnorm"},
    "one of two before the same merge": {"repeated-in-branch"},
    "live in eval mode": {"always-on"},
    "inactive (p=0)": set(),
}


def _site(kind: SiteKind, situation: str, site_id: str = "x.drop") -> Site:
    # a dropout module that forward never calls (`unused`) is never active and nothing flows from it
    called = kind is not SiteKind.UNUSED
    active = called and situation != "inactive (p=0)"
    reaches = ("x.bn1", "x.bn2", "x.bn3", "x.bn4") if called and situation == "reaches a BatchNorm" else ()
    return Site(id=site_id, module="x", op="Dropout", p=0.25 if situation != "inactive (p=0)" else 0.0, site=kind,
                paper_position="P3", active=active, always_on=active and situation == "live in eval mode",
                reaches=reaches, merge="x/add")


def _sites_for(kind: SiteKind, situation: str) -> list[Site]:
    site = _site(kind, situation)
    if situation != "one of two before the same merge":
        return [site]
    # the other dropout sits at the guideline position, so it is the one a branch keeps
    return [_site(SiteKind.BRANCH_GUIDELINE, "plain", "x.kept"), site]


def _conditions_met(kind: SiteKind, situation: str) -> set[str]:
    if kind is SiteKind.UNUSED:  # declared with p > 0, never called: live, and nothing else about it is known
        return {"site-kind"}
    return set() if situation == "inactive (p=0)" else SITUATIONS[situation] | {"site-kind"}


@pytest.mark.parametrize("situation", SITUATIONS)
@pytest.mark.parametrize("kind", list(SiteKind), ids=str)
def test_engine_fires_exactly_the_rules_whose_pages_declare_the_site_kind(kind: SiteKind, situation: str) -> None:
    met = _conditions_met(kind, situation)
    expected = {r.code for r in RULES if r.fires_on(kind) and r.fires_when in met}
    findings = [f for f in run_rules(_sites_for(kind, situation), {r.code: r for r in RULES}) if f.dropout == "x.drop"]
    assert {f.rule for f in findings} == expected
    by_code = {r.code: r for r in RULES}
    for finding in findings:  # the page's templates, filled: nothing left unfilled, advice for this kind
        rule = by_code[finding.rule]
        assert finding.message and "{" not in finding.message
        assert finding.fix == rule.advice(kind) and (finding.name, finding.severity) == (rule.name, rule.severity)


@pytest.mark.parametrize("condition", CONDITIONS)
def test_the_engine_fills_every_field_a_page_may_use(condition: str) -> None:
    every_field = " ".join(f"{{{field}}}" for field in MESSAGE_FIELDS)
    rule = Rule(code="DC999", name="every-field", severity=Severity.INFO, summary="", sites=(Rule.ANY,), paper="",
                path="", body="", fires_when=condition, message=every_field, fix=every_field)
    site = replace(_site(SiteKind.BRANCH_POST_WEIGHT, "reaches a BatchNorm"), always_on=True)
    findings = run_rules([_site(SiteKind.BRANCH_GUIDELINE, "plain", "x.kept"), site], {"DC999": rule})
    (finding,) = [f for f in findings if f.dropout == "x.drop"]
    assert finding.message == finding.fix == "x.drop Dropout 0.25  at P3 x x.bn1, x.bn2, x.bn3 ... x/add x.kept"


def test_findings_on_one_site_come_in_condition_order() -> None:
    # output order is part of the contract: reaches-batchnorm, site-kind, repeated-in-branch, always-on
    site = replace(_site(SiteKind.BRANCH_POST_WEIGHT, "reaches a BatchNorm"), always_on=True)
    sites = [_site(SiteKind.BRANCH_GUIDELINE, "plain", "x.kept"), site]
    findings = [f.rule for f in run_rules(sites, {r.code: r for r in RULES}) if f.dropout == "x.drop"]
    assert findings == ["DC001", "DC005", "DC004", "DC006"]


def test_dc001_fires_after_global_pooling_when_a_batchnorm_follows_whatever_the_site_kind() -> None:
    # timm's RepViT: pool -> dropout -> BatchNorm1d -> Linear. The page says `sites: any`.
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
            self.drop, self.head_bn, self.fc = nn.Dropout(0.2), nn.BatchNorm1d(8), nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn(self.conv(x))).mean((2, 3))
            return self.fc(self.head_bn(self.drop(x)))

    report = _audit(Model(), torch.randn(2, 3, 8, 8))
    assert report.dropouts[0].site is SiteKind.HEAD_POST_GAP
    assert [(f.rule, f.dropout) for f in report.findings] == [("DC001", "drop"), ("DC002", "drop")]
    assert report.findings[0].fix == get_rule("DC001").fix  # no advice of its own for head.post_gap


def test_every_rule_code_named_in_the_code_has_a_page() -> None:
    codes = {r.code for r in RULES}
    named = set()
    for path in (REPO / "dropcheck").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                named |= {(code, path.name) for code in re.findall(r"\bDC\d{3}\b", node.value)}
    assert {(code, where) for code, where in named if code not in codes} == set()


# preresnet and densenet between them put a dropout on every site kind that fix moves
_FIXED_EXAMPLES = [
    ("preresnet.py", {"position": "P3", "head_position": "H5", "blocks": (2, 1), "widths": (16, 32)}),
    ("preresnet.py", {"position": "P0", "head_position": "H6", "blocks": (2, 1), "widths": (16, 32)}),
    ("preresnet.py", {"position": "P7", "blocks": (2, 1), "widths": (16, 32)}),
    ("densenet.py", {}),
]


def test_fix_credits_each_move_to_the_rule_whose_page_claims_the_site_kind() -> None:
    moved = moved_by_fix()
    credited: dict[SiteKind, set[str]] = {}
    for example, args in _FIXED_EXAMPLES:
        spec = str(REPO / "examples" / example)
        kinds = {s.id: s.site for s in audit_loaded(load_target(spec, dict(args))).dropouts}
        result = fix_target(spec, dict(args))
        assert result.ok, [c for c in result.checks if not c.ok]
        for change in result.changes:
            credited.setdefault(kinds[change.dropout], set()).add(change.rule)
    assert {kind: {rule} for kind, rule in moved.items()} == credited
