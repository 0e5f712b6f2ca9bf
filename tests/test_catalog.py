"""The rule catalogue (rules/*.md) parses, is complete, and --select/--ignore resolve against it."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from dropcheck.analysis import catalog
from dropcheck.analysis.catalog import HEADINGS, get_rule, load_rules, read_rule, resolve_selection, rules_dir
from dropcheck.records import DropcheckError, Rule, Severity

REPO = pathlib.Path(__file__).resolve().parents[1]
ALL_CODES = frozenset(f"DC00{i}" for i in range(1, 8))
EXPECTED = {
    "DC001": ("dropout-before-batchnorm", Severity.ERROR),
    "DC002": ("dropout-after-global-pool", Severity.WARNING),
    "DC003": ("dropout-on-predictions", Severity.ERROR),
    "DC004": ("repeated-dropout-in-branch", Severity.WARNING),
    "DC005": ("post-weight-dropout", Severity.INFO),
    "DC006": ("dropout-always-on", Severity.ERROR),
    "DC007": ("unused-dropout", Severity.WARNING),
}


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    # load_rules is cached; tests that point it elsewhere must not leak into the others.
    load_rules.cache_clear()
    yield
    load_rules.cache_clear()


def _rule_files() -> list[pathlib.Path]:
    return sorted(p for p in rules_dir().glob("*.md") if p.name.lower() != "readme.md")


# --- the shipped catalogue -------------------------------------------------------------


def test_rules_dir_is_the_repository_catalogue_in_a_checkout() -> None:
    assert (rules_dir() / "DC001-dropout-before-batchnorm.md").is_file()


@pytest.mark.parametrize("path", _rule_files(), ids=lambda p: p.name)
def test_every_rule_file_parses(path: pathlib.Path) -> None:
    rule = read_rule(path)
    assert path.name == f"{rule.code}-{rule.name}.md"
    assert rule.summary and rule.paper and rule.sites


def test_catalogue_has_the_seven_rules_with_their_names_and_severities() -> None:
    rules = load_rules()
    assert [r.code for r in rules] == sorted(EXPECTED)
    assert {r.code: (r.name, r.severity) for r in rules} == EXPECTED


def test_rule_sites_and_conditions_follow_the_design_table() -> None:
    declared = {r.code: (r.fires_when, set(r.sites)) for r in load_rules()}
    assert declared == {
        "DC001": ("reaches-batchnorm", {"any"}),  # whatever the site kind (timm's RepViT: head.post_gap)
        "DC002": ("site-kind", {"head.post_gap", "head.pre_gap_channel"}),  # channel-wise before GAP is H5
        "DC003": ("site-kind", {"head.logits"}),
        "DC004": ("repeated-in-branch", {"branch.pre_bn", "branch.guideline", "branch.post_weight"}),
        "DC005": ("site-kind", {"branch.post_weight"}),
        "DC006": ("always-on", {"any"}),
        "DC007": ("site-kind", {"unused"}),
    }


def test_what_fix_does_follows_the_design() -> None:
    # design §6: fix moves DC001-DC005, makes always-on functional dropout a module, leaves DC007;
    # its re-audit guarantees no DC001-DC004
    declared = {r.code: (r.fix_action, set(r.fix_moves), r.fix_verifies) for r in load_rules()}
    assert declared == {
        "DC001": ("move", {"trunk.pre_bn", "branch.pre_bn", "head.pre_bn"}, True),
        "DC002": ("move", {"head.post_gap"}, True),
        "DC003": ("move", {"head.logits"}, True),
        "DC004": ("move", {"any"}, True),
        "DC005": ("move", {"branch.post_weight"}, False),
        "DC006": ("convert", set(), False),
        "DC007": ("none", set(), False),
    }
    assert catalog.describe_codes(catalog.verified_by_fix()) == "DC001-DC004"


def test_dc001_advice_depends_on_the_site_kind() -> None:
    rule = get_rule("DC001")
    assert rule.advice("branch.pre_bn").startswith("move it after the branch's last BatchNorm")
    assert rule.advice("trunk.pre_bn", "P0").startswith("move it into the residual branch of the block it enters")
    trunk = rule.advice("trunk.pre_bn")  # an MLP, a U-Net, a plain CNN: Li et al.'s place, or remove it
    assert "residual branch" not in trunk and "no BatchNorm follows" in trunk and "--remove" in trunk
    assert rule.advice("head.pre_bn").startswith("move it after the head's BatchNorm")
    assert rule.advice("head.post_gap") == rule.fix  # any other kind: the page's `fix`


@pytest.mark.parametrize(
    ("codes", "expected"),
    [({"DC004", "DC002", "DC001", "DC003"}, "DC001-DC004"), (["DC001", "DC002"], "DC001, DC002"),
     (["DC001", "DC003", "DC004"], "DC001, DC003, DC004"), (["DC005"], "DC005")],
)
def test_describe_codes_spans_consecutive_runs(codes, expected: str) -> None:
    assert catalog.describe_codes(codes) == expected


@pytest.mark.parametrize("rule", load_rules(), ids=lambda r: r.code)
def test_rule_body_has_the_fixed_headings_in_order(rule: Rule) -> None:
    found = re.findall(r"^## (.+)$", _without_code(rule.body), flags=re.MULTILINE)
    assert tuple(found) == HEADINGS


@pytest.mark.parametrize("rule", load_rules(), ids=lambda r: r.code)
def test_rule_has_bad_and_good_example_models_and_a_flagged_site(rule: Rule) -> None:
    for code in (rule.example_bad, rule.example_good):
        compile(code, f"<{rule.code} example>", "exec")  # syntax only: running needs torch
        assert "class Model(nn.Module)" in code
        assert re.search(r"^\s+input_shape = \(", code, flags=re.MULTILINE)
    assert rule.example_bad != rule.example_good
    assert rule.example_dropout


@pytest.mark.parametrize("rule", load_rules(), ids=lambda r: r.code)
def test_flagged_site_appears_in_the_bad_example(rule: Rule) -> None:
    # A module site "a.b.drop" is an attribute `self.drop`; a functional one "/dropout" a call.
    if "/" in rule.example_dropout:
        function = re.sub(r"_\d+$", "", rule.example_dropout.rpartition("/")[2])  # "/dropout_1" -> dropout
        assert re.search(rf"\b{re.escape(function)}\(", rule.example_bad)
    else:
        assert f"self.{rule.example_dropout.rsplit('.', 1)[-1]} =" in rule.example_bad


def _without_code(markdown: str) -> str:
    return re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)


# --- get_rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["DC001", "dc001", " Dc001 ", "dropout-before-batchnorm"])
def test_get_rule_by_code_in_any_case_or_by_name(key: str) -> None:
    assert get_rule(key).code == "DC001"


def test_get_rule_unknown_is_a_usage_error_listing_the_codes() -> None:
    with pytest.raises(DropcheckError) as caught:
        get_rule("DC999")
    assert caught.value.kind == "usage"
    assert "DC999" in caught.value.message
    assert "DC001" in caught.value.hint and "DC007" in caught.value.hint


# --- resolve_selection -------------------------------------------------------------------


@pytest.mark.parametrize("select", [None, [], ["ALL"], ["all"], ["DC"], ["DC00"], [""]])
def test_empty_or_everything_selects_all_rules(select: list[str] | None) -> None:
    assert resolve_selection(select) == ALL_CODES


@pytest.mark.parametrize(
    ("select", "expected"),
    [
        (["DC002"], {"DC002"}),
        (["dc002"], {"DC002"}),
        (["dropout-before-batchnorm"], {"DC001"}),
        (["DC001", "unused-dropout"], {"DC001", "DC007"}),
        (["DC001,DC003"], {"DC001", "DC003"}),
        ("DC004", {"DC004"}),  # a bare string is one selector, not characters
    ],
)
def test_select_by_code_name_or_comma_list(select, expected: set[str]) -> None:
    assert resolve_selection(select) == expected


def test_ignore_removes_from_the_selection() -> None:
    assert resolve_selection(None, ["DC005"]) == ALL_CODES - {"DC005"}
    assert resolve_selection(["DC00"], ["post-weight-dropout", "dc006"]) == ALL_CODES - {"DC005", "DC006"}
    assert resolve_selection(["DC001"], ["DC001"]) == frozenset()
    assert resolve_selection(None, ["ALL"]) == frozenset()


@pytest.mark.parametrize(
    ("select", "ignore"), [(["DC999"], None), (["DC01"], None), (["nope"], None), (None, ["DC9"])]
)
def test_unknown_selector_is_a_usage_error(select, ignore) -> None:
    with pytest.raises(DropcheckError) as caught:
        resolve_selection(select, ignore)
    assert caught.value.kind == "usage"
    assert caught.value.hint


# --- malformed rule files ---------------------------------------------------------------

GOOD_FILE = "DC001-dropout-before-batchnorm.md"


def _drop_line(prefix: str) -> Callable[[str], str]:
    return lambda text: "\n".join(line for line in text.splitlines() if not line.startswith(prefix)) + "\n"


def _swap_headings(text: str) -> str:
    swapped = text.replace("## Fix\n", "## TEMP\n").replace("## References\n", "## Fix\n")
    return swapped.replace("## TEMP\n", "## References\n")


def _second_python_block(text: str) -> str:
    return text.replace("## Use instead\n", "## Use instead\n\n```python\npass\n```\n")


def _replace(old: str, new: str) -> Callable[[str], str]:
    def mutate(text: str) -> str:
        assert old in text, old  # the mutation must hit the page
        return text.replace(old, new)

    return mutate


MALFORMED: dict[str, tuple[Callable[[str], str], str]] = {
    "missing key": (_drop_line("summary:"), "summary"),
    "missing message": (_drop_line("message:"), "message"),
    "bad severity": (_replace("severity: error", "severity: fatal"), "fatal"),
    "missing heading": (_drop_line("## Known limits"), "headings"),
    "headings out of order": (_swap_headings, "headings"),
    "nested value": (_replace("sites: ", "sites:\n  - "), "flat"),
    "unknown key": (_replace("paper:", "author: x\npaper:"), "author"),
    "code differs from file name": (_replace("code: DC001", "code: DC009"), "DC009"),
    "unknown site kind": (_replace("sites: any", "sites: trunk.before_bn"), "trunk.before_bn"),
    "unknown site kind to move from": (_replace("trunk.pre_bn,", "trunk.before_bn,"), "trunk.before_bn"),
    "any beside site kinds": (_replace("sites: any", "sites: any, head.logits"), "any"),
    "unknown condition": (_replace("fires-when: reaches-batchnorm", "fires-when: sometimes"), "sometimes"),
    "unknown message field": (_replace("{reached}", "{batchnorms}"), "batchnorms"),
    "format spec in a template": (_replace("(p={p})", "(p={p:g})"), "no format"),
    "unbalanced brace": (_replace("message: {op}", "message: {op"), "template"),
    "advice for no site kind": (_replace("fix.head.pre_bn:", "fix.head.pre_bm:"), "fix.head.pre_bm"),
    "advice for a kind it never fires on": (_replace("sites: any", "sites: branch.pre_bn"), "trunk.pre_bn"),
    "moves from a kind it never fires on": (
        lambda t: _drop_line("fix.")(t).replace("sites: any", "sites: branch.pre_bn"), "trunk.pre_bn"),
    "bad fix-action": (_replace("fix-action: move", "fix-action: teleport"), "teleport"),
    "fix-moves without a move": (_replace("fix-action: move", "fix-action: convert"), "fix-moves"),
    "a move without fix-moves": (_drop_line("fix-moves:"), "fix-moves"),
    "fix-verifies neither yes nor no": (_replace("fix-verifies: yes", "fix-verifies: true"), "true"),
    "verifies what fix leaves alone": (
        lambda t: _drop_line("fix-moves:")(t).replace("fix-action: move", "fix-action: none"), "fix-verifies"),
    "two python blocks": (_second_python_block, "exactly one"),
    "no front matter": (lambda t: t.split("---\n", 2)[2], "front matter"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=str)
def test_malformed_rule_file_is_a_catalog_error_naming_file_and_problem(
    case: str, tmp_path: pathlib.Path
) -> None:
    mutate, expected_word = MALFORMED[case]
    path = tmp_path / GOOD_FILE
    path.write_text(mutate((rules_dir() / GOOD_FILE).read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(DropcheckError) as caught:
        read_rule(path)
    assert caught.value.kind == "catalog"
    assert GOOD_FILE in caught.value.message
    assert expected_word in caught.value.message


def test_heading_inside_a_code_block_is_not_a_heading(tmp_path: pathlib.Path) -> None:
    text = (rules_dir() / GOOD_FILE).read_text(encoding="utf-8")
    path = tmp_path / GOOD_FILE
    commented = text.replace("```python\n", "```python\n## a comment, not a heading\n", 1)
    path.write_text(commented, encoding="utf-8")
    assert read_rule(path).example_bad.startswith("## a comment")


def test_duplicate_code_in_the_catalogue_is_a_catalog_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    text = (rules_dir() / GOOD_FILE).read_text(encoding="utf-8")
    (tmp_path / GOOD_FILE).write_text(text, encoding="utf-8")
    renamed = text.replace("name: dropout-before-batchnorm", "name: dropout-before-bn")
    (tmp_path / "DC001-dropout-before-bn.md").write_text(renamed, encoding="utf-8")
    monkeypatch.setattr(catalog, "rules_dir", lambda: tmp_path)
    with pytest.raises(DropcheckError) as caught:
        load_rules()
    assert caught.value.kind == "catalog" and "DC001" in caught.value.message


def test_two_pages_claiming_one_site_kind_for_fix_is_a_catalog_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    # a move from one site kind is credited to one rule in changes.json
    text = (rules_dir() / GOOD_FILE).read_text(encoding="utf-8")
    (tmp_path / GOOD_FILE).write_text(text, encoding="utf-8")
    other = text.replace("code: DC001", "code: DC009").replace("name: dropout-before-batchnorm", "name: other")
    (tmp_path / "DC009-other.md").write_text(other, encoding="utf-8")
    monkeypatch.setattr(catalog, "rules_dir", lambda: tmp_path)
    with pytest.raises(DropcheckError) as caught:
        load_rules()
    assert caught.value.kind == "catalog" and "trunk.pre_bn" in caught.value.message
    assert "DC009-other.md" in caught.value.message


def test_missing_catalogue_is_a_catalog_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    monkeypatch.setattr(catalog, "rules_dir", lambda: tmp_path / "absent")
    with pytest.raises(DropcheckError) as caught:
        load_rules()
    assert caught.value.kind == "catalog"


def test_rules_dir_prefers_the_catalogue_shipped_in_the_package(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site-packages" / "dropcheck"
    package.mkdir(parents=True)
    monkeypatch.setattr(catalog, "__file__", str(package / "analysis" / "catalog.py"))
    assert rules_dir() == tmp_path / "site-packages" / "rules"  # no shipped copy: next to the package
    (package / "rules").mkdir()
    assert rules_dir() == package / "rules"


# --- import cost ---------------------------------------------------------------------------


def test_loading_the_catalogue_does_not_import_torch() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import dropcheck.analysis.catalog as c; c.load_rules(); c.resolve_selection(['DC00']); "
        "c.moved_by_fix(); c.verified_by_fix(); "
        "print('torch' in sys.modules)"
    )
    command = [sys.executable, "-c", code, str(REPO)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
