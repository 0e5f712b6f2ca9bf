"""The records in a notebook: a one-line repr, an HTML table, a rich table, and to_json() equal to the CLI's JSON.

Most records are built by hand (no torch), so the views are pinned on known values; one test runs the
CLI on a user's model file and compares its JSON with the Report's `to_json()`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

import dropcheck
from dropcheck.output.json_documents import comparison_document, fix_document, reproduction_document
from dropcheck.records import (CaptureInfo, Change, Check, Comparison, DropcheckError, Finding, FixResult, Measurement,
                               Report, Reproduction, RunResult, Severity, Site, SiteKind, SourceLocation)

ROOT = Path(__file__).resolve().parents[1]


def _report(ids: tuple[str, ...] = ("layer1.0.drop", "layer1.1.drop", "head.drop"), measured: bool = False) -> Report:
    src = SourceLocation("resnet.py", 26)
    sites = [Site(id=i, module=i, op="Dropout", p=0.1, site=SiteKind.BRANCH_PRE_BN, paper_position="P3",
                  reaches=(f"{i}.bn2",), source=src) for i in ids[:-1]]
    sites.append(Site(id=ids[-1], module=ids[-1], op="Dropout", p=0.5, site=SiteKind.BRANCH_GUIDELINE,
                      paper_position="P6", source=SourceLocation("resnet.py", 40)))
    findings = [Finding(rule="DC001", name="dropout-before-batchnorm", severity=Severity.ERROR, dropout=i,
                        message=f"Dropout(p=0.1) reaches BatchNorm {i}.bn2", fix="move it", source=src)
                for i in ids[:-1]]
    measurements = None
    if measured:
        measurements = [Measurement(node=f"n{k}", module=f"{i}.bn2", kind="batchnorm", delta_mean=0.8123 + k / 100,
                                    delta_min=0.7011, symmetric_mean=1.2, reached_by=(i,), flagged=True,
                                    flagged_by=(i,)) for k, i in enumerate(ids[:-1])]
    return Report(target="resnet.py", model="ResNet", input_shape=[2, 3, 32, 32],
                  capture=CaptureInfo("symbolic_trace", 79, "cpu", True), dropouts=sites, findings=findings,
                  seconds=1.5, measurements=measurements,
                  measure_settings={"batches": 4} if measured else None)


def _fix_result() -> FixResult:
    changes = [Change("move", "layer1.0.drop", "before layer1.0.conv2", 0.1, "DC001", "layer1.0.drop", "P3", "P6")]
    checks = [Check("eval outputs", True, "bit-identical"), Check("re-audit", False, "DC001 on <x> & y")]
    return FixResult(target="resnet.py", model=None, changes=changes, checks=checks, unfixable=[],
                     code_before="", code_after="", input_shape=[2, 3, 32, 32])


def _comparison() -> Comparison:
    finals = {"original": [90.25, 91.5, 90.75], "fixed": [92.5, 93.25, 92.75]}
    runs = [RunResult(variant=v, seed=s, status="done", epochs=({"test_acc": a},), final_acc=a, best_acc=a + 0.5,
                      best_epoch=1, seconds=1.0, images_per_s=1.0, init_sha=str(s), order_sha=str(s))
            for v, accs in finals.items() for s, a in enumerate(accs)]
    return Comparison(target="resnet.py", settings={"seeds": [0, 1, 2]}, baseline="original",
                      variants=[{"name": v, "guideline": v == "fixed"} for v in finals], runs=runs)


def _reproduction() -> Reproduction:
    rows = ({"p": 0.1, "delta": 0.9512, "closed": 0.9500, "holds": True},
            {"p": 0.5, "delta": 0.7021, "closed": 0.7000, "holds": True})
    return Reproduction("fig3", "Figure 3", "N(0,1)", "Δ < 1", (("p", "drop p"), ("delta", "Δ"), ("closed", "eq. 29")),
                        rows, (("delta", "closed"),))


def _records() -> dict[str, object]:
    error = Report(target="x/" * 150 + "model.py", status="error",
                   error=DropcheckError("load", "no nn.Module in it " * 30, "name one"))
    return {"report": _report(), "measured": _report(measured=True), "error": error, "fix": _fix_result(),
            "measurement": _report(measured=True).measurements[0], "comparison": _comparison(),
            "reproduction": _reproduction()}


@pytest.mark.parametrize("name", list(_records()))
def test_repr_is_one_short_line(name: str) -> None:
    text = repr(_records()[name])
    assert "\n" not in text and len(text) < 200, text
    assert text.startswith("<") and text.endswith(">")


def test_repr_says_target_model_counts_and_worst() -> None:
    assert repr(_report()) == ("<Report resnet.py: ResNet, 3 dropouts, 2 findings (DC001 x2), worst error>")
    assert repr(_report(measured=True)).endswith(", Δ measured at 2 (lowest 0.812)>")
    assert repr(_fix_result()) == "<FixResult resnet.py: NOT ok, 1 change (move 1), 1/2 checks passed>"
    assert repr(_comparison()).startswith("<Comparison resnet.py: 2 variants x 3 seeds, 6/6 runs; fixed vs original +2.00")


def test_worst_is_a_property() -> None:
    assert _report().worst is Severity.ERROR
    assert Report(target="t").worst is None


def test_html_of_a_report_is_a_table_of_verdicts_per_dropout() -> None:
    page = _report()._repr_html_()
    assert page is not None and page.count("<table>") == 2  # dropouts, findings
    assert "<td>layer1.0.drop</td><td>Dropout</td><td>0.1</td><td>branch.pre_bn</td><td>P3</td><td>DC001</td>" in page
    assert "<td>head.drop</td><td>Dropout</td><td>0.5</td><td>branch.guideline</td><td>P6</td><td>ok</td>" in page


def test_html_of_a_measured_report_has_delta_per_batchnorm() -> None:
    page = _report(measured=True)._repr_html_()
    assert page.count("<table>") == 3
    assert "<td>layer1.1.drop.bn2</td><td>batchnorm</td><td>0.8223</td><td>0.7011</td>" in page
    assert "<th>lowest Δ</th>" in page and "<td>0.8123</td>" in page  # layer1.0.drop's row


def test_html_escapes_ids_and_messages() -> None:
    report = _report(ids=("blocks.<0>&a/dropout", "head.drop"))
    page = report._repr_html_()
    assert "blocks.&lt;0&gt;&amp;a/dropout" in page
    assert "<0>" not in page and "&a/" not in page
    assert "DC001 on &lt;x&gt; &amp; y" in _fix_result()._repr_html_()


def test_html_of_a_comparison_has_accuracies_and_the_paired_difference() -> None:
    page = _comparison()._repr_html_()
    assert "<td>fixed*</td><td>92.83 ± 0.38</td>" in page
    assert "(+2.00)" in page
    assert "<tr><td>1</td><td>91.50</td><td>93.25</td></tr>" in page  # per seed


def test_html_of_fix_result_reproduction_and_measurement() -> None:
    fix_page = _fix_result()._repr_html_()
    assert "<td>move</td><td>layer1.0.drop</td><td>P3 -&gt; P6 before layer1.0.conv2</td>" in fix_page
    assert "<td>re-audit</td><td>NO</td>" in fix_page
    repro = _reproduction()._repr_html_()
    assert "<th>drop p</th><th>Δ</th><th>eq. 29</th><th>holds</th>" in repro
    assert "<td>0.5</td><td>0.7021</td><td>0.7</td><td>yes</td>" in repro
    assert "<td>0.8123</td><td>0.7011</td>" in _report(measured=True).measurements[0]._repr_html_()


def test_rich_draws_a_table_and_keeps_brackets_in_ids() -> None:
    console = Console(record=True, width=140, force_terminal=False)
    console.print(_report(ids=("blocks.[bold]0.drop", "head.drop")))
    text = console.export_text()
    header = next(line for line in text.splitlines() if " paper position " in line)
    assert header.split() == ["id", "op", "p", "site", "paper", "position", "findings"]
    assert "─" * 20 in text  # the table's head rule
    row = next(line for line in text.splitlines() if "blocks.[bold]0.drop" in line)
    assert row.split()[:6] == ["blocks.[bold]0.drop", "Dropout", "0.1", "branch.pre_bn", "P3", "DC001"]


def test_json_of_each_record_is_the_object_in_its_cli_document() -> None:
    fix, comparison, repro = _fix_result(), _comparison(), _reproduction()
    assert json.loads(fix.to_json()) == fix_document(fix)["fix"]
    assert json.loads(comparison.to_json()) == comparison_document(comparison)["train_compare"]
    assert json.loads(repro.to_json()) == reproduction_document(repro)["reproduce"]


def test_import_dropcheck_registers_the_views_without_torch_or_rich() -> None:
    code = textwrap.dedent("""
        import sys
        from dropcheck.records import Report, Site, SiteKind
        report = Report(target="m.py", model="Net", dropouts=[Site("d", "d", "Dropout", 0.2, SiteKind.OTHER)])
        print("torch" in sys.modules, "rich" in sys.modules)  # until something is drawn
        page = report._repr_html_()
        print("torch" in sys.modules, "<table>" in page, "<td>d</td>" in page)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False", "False", "True", "True"], done.stderr


USER_MODEL = '''
import torch.nn as nn
import torch.nn.functional as F

INPUT_SHAPE = (2, 3, 16, 16)


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.drop = nn.Dropout(p=0.3)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        out = self.drop(F.relu(self.bn1(self.conv1(x))))
        return F.relu(x + self.bn2(self.conv2(out)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.head = nn.Linear(8, 10)
        self.head_drop = nn.Dropout(0.5)

    def forward(self, x):
        out = F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)
        return self.head(self.head_drop(out))
'''.lstrip("\n")


def test_report_to_json_equals_the_cli_result(tmp_path: Path) -> None:
    from dropcheck.analysis.pipeline import audit_target

    model = tmp_path / "net.py"
    model.write_text(USER_MODEL)
    done = subprocess.run([sys.executable, "-m", "dropcheck", "audit", str(model), "--format", "json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    cli = json.loads(done.stdout)["results"][0]
    report = audit_target(str(model))  # what the CLI calls for one target
    mine = json.loads(report.to_json())
    assert [f["rule"] for f in cli["findings"]] == ["DC001", "DC001", "DC002"]
    for result in (cli, mine):
        result.pop("seconds")
        # where shapes ran: a fresh process materialises a small model on the CPU, one that has already
        # imported torch._dynamo (earlier tests) keeps it on meta, whose kernels are cheap by then
        assert result["capture"].pop("device") in ("cpu", "meta")
    assert mine == cli
    assert repr(report).endswith(": Net, 3 dropouts, 3 findings (DC001 x2, DC002 x1), worst error>")
