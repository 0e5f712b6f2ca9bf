"""The source-edit layer of `dropcheck fix` (issue 12): requests in source terms become minimal,
formatting-preserving edits of the user's file, or come back refused with the reason.

Pure libcst, no torch, except the end-to-end tests at the bottom, which import the original and
the patched source and check what `fix` promises: same state_dict keys, same eval outputs, and
train mode still drops."""
from __future__ import annotations

import importlib.util
import os
import stat
import sys
from pathlib import Path

import pytest

from dropcheck.fixer.source_edits import (AllOf, ApplyDropout, CallSite, DeclareDropout, GateOnTraining,
                                          MakeElementwise, MoveDropout, MoveInSequential, RemoveDropout, SourcePatch,
                                          patch_source, read_source, sequential_key_renames, write_patch)
from dropcheck.records import DropcheckError

sys.path.insert(0, str(Path(__file__).parent))
from source_models import (ODD, PREACT_BLOCK, RESNET18, SEQUENTIAL_NET, WIDE_BLOCK,  # noqa: E402
                           WIDE_BLOCK_PRE_BN)

BLOCK_FIX = MoveDropout(CallSite("BasicBlock", "self.drop"), to=CallSite("BasicBlock", "self.bn2"), side="after")
HEAD_FIX = MoveDropout(CallSite("ResNet", "self.dropout"), to=CallSite("ResNet", "torch.nn.functional.avg_pool2d"))


def applied(source: str, *requests) -> SourcePatch:
    patch = patch_source(source, list(requests), "model.py")
    assert [r.reason for r in patch.results if not r.applied] == []
    return patch


def refusal(source: str, request) -> str:
    patch = patch_source(source, [request])
    assert patch.patched == source and not patch.results[0].applied
    return patch.results[0].reason


def changed_lines(patch: SourcePatch) -> tuple[int, int]:
    """(lines removed, lines added) in the unified diff."""
    lines = [line for line in patch.diff().splitlines() if not line.startswith(("---", "+++"))]
    return sum(line.startswith("-") for line in lines), sum(line.startswith("+") for line in lines)


def line_of(source: str, text: str) -> int:
    """The line (from 1) of the first occurrence of `text`."""
    return source[:source.index(text)].count("\n") + 1


def method(source: str, header: str) -> str:
    """The text of one method (its `def` line up to the next blank line or def)."""
    start = source.index(header)
    end = min(i for i in (source.find("\n\n", start), source.find("\n    def ", start + 1), len(source)) if i > 0)
    return source[start:end]


# -- removing ------------------------------------------------------------------------------------


def test_removing_a_dropout_statement_deletes_that_line_only() -> None:
    patch = applied(RESNET18, RemoveDropout(CallSite("BasicBlock", "self.drop")))
    line = "        out = self.drop(out)  # regularise between the convolutions\n"
    assert patch.patched == RESNET18.replace(line, "")
    assert changed_lines(patch) == (1, 0)


def test_removing_a_dropout_that_assigns_another_name_keeps_the_assignment() -> None:
    source = RESNET18.replace("out = self.drop(out)  # regularise", "h = self.drop(out)  # regularise")
    patch = applied(source, RemoveDropout(CallSite("BasicBlock", "self.drop")))
    assert "        h = out  # regularise between the convolutions\n" in patch.patched
    assert changed_lines(patch) == (1, 1)


def test_removing_a_nested_dropout_unwraps_the_call() -> None:
    patch = applied(PREACT_BLOCK, RemoveDropout(CallSite("PreActBlock", "self.drop", occurrence=1)))
    assert patch.patched == PREACT_BLOCK.replace("self.conv2(self.drop(F.relu(self.bn2(out))))",
                                                 "self.conv2(F.relu(self.bn2(out)))")


def test_the_same_dropout_called_twice_needs_an_occurrence() -> None:
    reason = refusal(PREACT_BLOCK, RemoveDropout(CallSite("PreActBlock", "self.drop")))
    assert reason == ("self.drop is called 2 times in PreActBlock.forward (lines 22, 24); say which occurrence")
    patch = applied(PREACT_BLOCK, RemoveDropout(CallSite("PreActBlock", "self.drop", occurrence=0)))
    assert patch.patched == PREACT_BLOCK.replace("        out = self.drop(out)\n", "")


def test_a_line_number_picks_the_call_as_an_fx_stack_trace_would() -> None:
    patch = applied(PREACT_BLOCK, RemoveDropout(CallSite("PreActBlock", "self.drop", line=24)))
    assert patch.patched == PREACT_BLOCK.replace("self.conv2(self.drop(F.relu(self.bn2(out))))",
                                                 "self.conv2(F.relu(self.bn2(out)))")
    assert refusal(PREACT_BLOCK, RemoveDropout(CallSite("PreActBlock", "self.drop", line=23))) == (
        "no call to self.drop in PreActBlock.forward at line 23")


def test_removing_a_guarded_functional_dropout_removes_its_if() -> None:
    patch = applied(WIDE_BLOCK, RemoveDropout(CallSite("WideBasic", "torch.nn.functional.dropout")))
    assert patch.patched == WIDE_BLOCK.replace('''        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
''', "")
    assert changed_lines(patch) == (2, 0)


@pytest.mark.parametrize("call, kept", [
    ("nn.functional.dropout(h, 0.2, self.training)", "h"),
    ("torch.dropout(h, 0.2, self.training)", "h"),
    ("F.dropout(input=h + 1, p=0.2)", "h + 1"),
])
def test_every_spelling_of_functional_dropout_is_removed(call: str, kept: str) -> None:
    source = f'''import torch
from torch import nn
import torch.nn.functional as F


class Head(nn.Module):
    def forward(self, h):
        y = {call}
        return self.fc(y)
'''
    patch = applied(source, RemoveDropout(CallSite("Head", call.split("(")[0])))
    assert patch.patched == source.replace(call, kept)


def test_an_unwrapped_sum_keeps_its_meaning_with_parentheses() -> None:
    source = '''class M(nn.Module):
    def forward(self, a, b):
        y = self.drop(a + b) * 2
        return self.drop(a - b) + y
'''
    patch = applied(source, RemoveDropout(CallSite("M", "self.drop", occurrence=0)),
                    RemoveDropout(CallSite("M", "self.drop")))
    assert patch.patched == source.replace("self.drop(a + b) * 2", "(a + b) * 2").replace(
        "self.drop(a - b) + y", "(a - b) + y")


def test_removal_keeps_the_other_statements_of_a_line_and_fills_an_emptied_block() -> None:
    source = '''class M(nn.Module):
    def forward(self, out):
        out = self.conv1(out); out = self.drop(out)
        if self.use_drop: out = self.drop2(out)
        if self.flag:
            out = self.drop3(out)
        else:
            out = out * 2
        return out
'''
    patch = applied(source, RemoveDropout(CallSite("M", "self.drop")), RemoveDropout(CallSite("M", "self.drop2")),
                    RemoveDropout(CallSite("M", "self.drop3")))
    assert patch.patched == '''class M(nn.Module):
    def forward(self, out):
        out = self.conv1(out)
        if self.flag:
            pass
        else:
            out = out * 2
        return out
'''


# -- applying and moving -------------------------------------------------------------------------


def test_cifar_resnet18_fix_is_a_two_line_move_in_each_place() -> None:
    patch = applied(RESNET18, BLOCK_FIX, HEAD_FIX)
    expected = RESNET18.replace('''        out = self.drop(out)  # regularise between the convolutions
        out = self.bn2(self.conv2(out))
''', '''        out = self.bn2(self.conv2(out))
        out = self.drop(out)  # regularise between the convolutions
''').replace('''        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        out = self.dropout(out)
''', '''        out = self.dropout(out)
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
''')
    assert patch.patched == expected
    assert changed_lines(patch) == (2, 2)
    assert patch.diff().count("@@ ") == 2


def test_moving_a_dropout_to_where_it_is_changes_nothing() -> None:
    patch = applied(WIDE_BLOCK, MoveDropout(CallSite("WideBasic", "F.dropout"), to=CallSite("WideBasic", "self.conv2")))
    assert patch.patched == WIDE_BLOCK and patch.diff() == ""


def test_the_new_place_is_named_as_in_the_text_before_the_move() -> None:
    # lines and occurrences name calls in the file the user has, though the dropout goes first
    by_line = MoveDropout(CallSite("BasicBlock", "self.drop"), to=CallSite("BasicBlock", "self.bn2", line=28),
                          side="after")
    assert applied(RESNET18, by_line).patched == applied(RESNET18, BLOCK_FIX).patched
    source = '''class M(nn.Module):
    def forward(self, x):
        x = self.drop(x)
        x = self.block(x)
        y = self.drop(x)
        return self.fc(y)
'''
    patch = applied(source, MoveDropout(CallSite("M", "self.drop", occurrence=0),
                                        to=CallSite("M", "self.drop", occurrence=1), side="after"))
    assert patch.patched == source.replace("        x = self.drop(x)\n", "").replace(
        "        y = self.drop(x)\n", "        y = self.drop(x)\n        y = self.drop(y)\n")


def test_lines_name_the_original_text_after_earlier_requests_moved_them() -> None:
    drop, bn2, head, linear = (line_of(RESNET18, text) for text in (
        "out = self.drop(out)", "out = self.bn2(", "out = self.dropout(out)", "out = self.linear(out)"))
    by_lines = [DeclareDropout("BasicBlock", "drop2", 0.1, after="bn1"),
                RemoveDropout(CallSite("ResNet", "self.dropout", line=head)),
                MoveDropout(CallSite("BasicBlock", "self.drop", line=drop),
                            to=CallSite("BasicBlock", "self.bn2", line=bn2), side="after"),
                ApplyDropout(CallSite("ResNet", "self.linear", line=linear))]
    by_names = [DeclareDropout("BasicBlock", "drop2", 0.1, after="bn1"),
                RemoveDropout(CallSite("ResNet", "self.dropout")), BLOCK_FIX,
                ApplyDropout(CallSite("ResNet", "self.linear"))]
    assert applied(RESNET18, *by_lines).patched == applied(RESNET18, *by_names).patched
    twice = patch_source(RESNET18, [RemoveDropout(CallSite("ResNet", "self.dropout")),
                                    RemoveDropout(CallSite("ResNet", "self.dropout", line=head))])
    assert twice.results[1].reason == (f"self.dropout(...) in ResNet.forward (line {head}): an earlier request "
                                       "of this patch rewrote that line")


def test_a_guarded_dropout_moves_with_its_guard() -> None:
    patch = applied(WIDE_BLOCK_PRE_BN,
                    MoveDropout(CallSite("WideBasic", "F.dropout"), to=CallSite("WideBasic", "self.conv2")))
    assert method(patch.patched, "    def forward") == method(WIDE_BLOCK_PRE_BN, "    def forward").replace('''
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.relu2(self.bn2(out))
''', '''
        out = self.relu2(self.bn2(out))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
''')
    assert changed_lines(patch) == (1, 1)  # difflib shows it as the relu2 line moving up


def test_a_moved_statement_keeps_its_own_comment_and_leaves_the_others() -> None:
    source = WIDE_BLOCK_PRE_BN.replace("training=self.training)\n", "training=self.training)  # p from the paper\n")
    source = source.replace("        if self.droprate > 0:\n", "        # regularise\n        if self.droprate > 0:\n")
    patch = applied(source, MoveDropout(CallSite("WideBasic", "F.dropout"), to=CallSite("WideBasic", "self.conv2")))
    assert method(patch.patched, "    def forward") == method(source, "    def forward").replace('''
        # regularise
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)  # p from the paper
        out = self.relu2(self.bn2(out))
''', '''
        # regularise
        out = self.relu2(self.bn2(out))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)  # p from the paper
''')
    # a line holding more than the dropout keeps its comment where it is
    source = RESNET18.replace("out = self.drop(out)  # regularise", "out = self.drop(out); n = 1  # regularise")
    patch = applied(source, BLOCK_FIX)
    assert "        n = 1  # regularise between the convolutions\n" in patch.patched
    assert "        out = self.drop(out)\n" in patch.patched


def test_a_statement_moved_into_a_call_takes_its_comment_to_that_line() -> None:
    source = '''class Net(nn.Module):
    def forward(self, x):
        out = self.pool(self.features(x)).flatten(1)
        out = self.drop(out)  # regularise the classifier
        return self.fc(out)
'''
    # the pool's input is an expression, so the dropout wraps it; a line with a comment keeps its own
    moved = MoveDropout(CallSite("Net", "self.drop"), to=CallSite("Net", "self.pool"))
    assert applied(source, moved).patched == source.replace(
        "        out = self.pool(self.features(x)).flatten(1)\n",
        "        out = self.pool(self.drop(self.features(x))).flatten(1)  # regularise the classifier\n",
    ).replace("        out = self.drop(out)  # regularise the classifier\n", "")
    commented = source.replace(".flatten(1)", ".flatten(1)  # backbone")
    assert "        out = self.pool(self.drop(self.features(x))).flatten(1)  # backbone\n" in \
        applied(commented, moved).patched


def test_a_guard_does_not_move_when_its_statement_stays() -> None:
    # `h = out` stays under the `if`, so the guard cannot come along, and the dropout may not leave it
    source = WIDE_BLOCK_PRE_BN.replace("            out = F.dropout(out, p=self.droprate, training=self.training)",
                                       "            h = F.dropout(out, p=self.droprate, training=self.training)")
    reason = refusal(source, MoveDropout(CallSite("WideBasic", "F.dropout"), to=CallSite("WideBasic", "self.conv2")))
    assert "sit under different `if`/`for`/`with` blocks" in reason


def test_a_guarded_dropout_that_needs_a_line_of_its_own_is_refused_where_there_is_none() -> None:
    source = '''class M(nn.Module):
    def forward(self, x):
        out = self.conv1(x)
        if self.p > 0:
            out = F.dropout(out, p=self.p, training=self.training)
        return self.conv2(F.relu(self.bn(out)))
'''
    reason = refusal(source, MoveDropout(CallSite("M", "F.dropout"), to=CallSite("M", "self.conv2")))
    assert reason == ("the dropout (it runs under `if self.p > 0`) needs a line of its own before "
                      "self.conv2(...) in M.forward (line 6), but its input is an expression, not a variable")


def test_a_channelwise_functional_dropout_moved_before_the_pool_becomes_elementwise() -> None:
    source = '''import torch.nn.functional as F


class Head(nn.Module):
    def forward(self, x):
        x = F.adaptive_avg_pool2d(x, 1)
        x = F.dropout2d(x, 0.2, self.training)
        return self.fc(x.flatten(1))
'''
    patch = applied(source, MoveDropout(CallSite("Head", "F.dropout2d"), to=CallSite("Head", "F.adaptive_avg_pool2d"),
                                        elementwise=True))
    assert patch.patched == source.replace('''        x = F.adaptive_avg_pool2d(x, 1)
        x = F.dropout2d(x, 0.2, self.training)
''', '''        x = F.dropout(x, 0.2, self.training)
        x = F.adaptive_avg_pool2d(x, 1)
''')


def test_a_moved_statement_wraps_the_input_when_it_is_an_expression() -> None:
    source = PREACT_BLOCK.replace("self.conv2(self.drop(F.relu(self.bn2(out))))", "self.conv2(F.relu(self.bn2(out)))")
    patch = applied(source, MoveDropout(CallSite("PreActBlock", "self.drop"), to=CallSite("PreActBlock", "self.conv2")))
    assert patch.patched == PREACT_BLOCK.replace("        out = self.drop(out)\n", "")


def test_wrap_style_nests_the_dropout_in_the_weight_layer_call() -> None:
    patch = applied(RESNET18, MoveDropout(CallSite("BasicBlock", "self.drop"), to=CallSite("BasicBlock", "self.conv2"),
                                          style="wrap"))
    assert method(patch.patched, "    def forward(self, x):\n        out = F.relu(self.bn1(self.conv1(x)))") == '''\
    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.drop(out)))  # regularise between the convolutions
        out += self.shortcut(x)
        out = F.relu(out)
        return out'''


def test_dropout_before_global_pooling_in_each_spelling() -> None:
    source = '''import torch.nn.functional as F


class Head(nn.Module):
    def forward(self, x):
        x = self.features(x)
        x = x.mean((2, 3))
        y = self.avgpool(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)) + y
'''
    patch = applied(source, ApplyDropout(CallSite("Head", ".mean")),
                    ApplyDropout(CallSite("Head", "self.avgpool")),
                    ApplyDropout(CallSite("Head", "torch.nn.functional.adaptive_avg_pool2d"), style="wrap"))
    assert patch.patched == '''import torch.nn.functional as F


class Head(nn.Module):
    def forward(self, x):
        x = self.features(x)
        x = self.drop(x)
        x = x.mean((2, 3))
        y = self.avgpool(self.drop(x))
        return self.fc(F.adaptive_avg_pool2d(self.drop(x), 1).flatten(1)) + y
'''


def test_a_new_statement_that_would_reach_later_uses_is_refused_and_auto_wraps() -> None:
    source = '''class M(nn.Module):
    def forward(self, out):
        y = self.conv2(out)
        return y + out
'''
    reason = refusal(source, ApplyDropout(CallSite("M", "self.conv2"), style="statement"))
    assert "(line 3), but its statement does not assign out" in reason
    assert applied(source, ApplyDropout(CallSite("M", "self.conv2"))).patched == source.replace(
        "self.conv2(out)", "self.conv2(self.drop(out))")


def test_dropout_after_a_call_is_a_statement_or_wraps_the_call() -> None:
    source = '''class M(nn.Module):
    def forward(self, out):
        out = self.bn2(out)
        return F.relu(self.bn3(out))
'''
    patch = applied(source, ApplyDropout(CallSite("M", "self.bn2"), side="after"),
                    ApplyDropout(CallSite("M", "self.bn3"), dropout="F.dropout",
                                 arguments="p=0.1, training=self.training", side="after"))
    assert patch.patched == '''class M(nn.Module):
    def forward(self, out):
        out = self.bn2(out)
        out = self.drop(out)
        return F.relu(F.dropout(self.bn3(out), p=0.1, training=self.training))
'''


def test_self_in_a_request_means_the_methods_instance_argument() -> None:
    source = '''class M(nn.Module):
    def forward(me, out):
        return me.fc(out)
'''
    patch = applied(source, ApplyDropout(CallSite("M", "self.fc"), dropout="F.dropout",
                                         arguments="p=0.5, training=self.training"))
    assert patch.patched == source.replace("        return me.fc(out)", """\
        out = F.dropout(out, p=0.5, training=me.training)
        return me.fc(out)""")


def test_a_move_out_of_a_loop_is_refused() -> None:
    source = '''class M(nn.Module):
    def forward(self, x):
        for layer in self.layers:
            x = self.drop(layer(x))
        return self.fc(x)
'''
    reason = refusal(source, MoveDropout(CallSite("M", "self.drop"), to=CallSite("M", "self.fc")))
    assert "sit under different `if`/`for`/`with` blocks" in reason


def test_a_dropout_called_with_star_arguments_is_refused() -> None:
    source = '''class M(nn.Module):
    def forward(self, *args):
        return self.drop(*args)
'''
    assert "passes *args or **kwargs" in refusal(source, RemoveDropout(CallSite("M", "self.drop")))


@pytest.mark.parametrize("site, reason", [
    (CallSite("Nope", "self.drop"), "no class Nope in this file"),
    (CallSite("BasicBlock", "self.drop", method="step"), "class BasicBlock defines no method step"),
    (CallSite("BasicBlock", "self.dropout"), "no call to self.dropout in BasicBlock.forward"),
    (CallSite("BasicBlock", "self.drop", occurrence=1), "there is no occurrence 1"),
])
def test_a_request_that_names_nothing_comes_back_refused(site: CallSite, reason: str) -> None:
    assert reason in refusal(RESNET18, RemoveDropout(site))


def test_the_parts_of_a_group_name_lines_of_the_original_text() -> None:
    linear = line_of(RESNET18, "out = self.linear(out)")
    together = AllOf((DeclareDropout("ResNet", "drop2", 0.2),
                      ApplyDropout(CallSite("ResNet", "self.linear", line=linear), dropout="self.drop2")))
    assert "        out = self.drop2(out)\n        out = self.linear(out)" in applied(RESNET18, together).patched


def test_requests_together_apply_all_or_none() -> None:
    together = AllOf((DeclareDropout("BasicBlock", "drop2", 0.2), ApplyDropout(CallSite("BasicBlock", "self.fc"),
                                                                              dropout="self.drop2")))
    reason = refusal(RESNET18, together)
    assert reason == "part 2 of 2: no call to self.fc in BasicBlock.forward"


# -- train/eval gating ---------------------------------------------------------------------------


@pytest.mark.parametrize("call, gated", [
    ("F.dropout(out, p=self.droprate)", "F.dropout(out, p=self.droprate, training=self.training)"),
    ("F.dropout(out, p=self.droprate, training=True)", "F.dropout(out, p=self.droprate, training=self.training)"),
    ("F.dropout(out, 0.3, True)", "F.dropout(out, 0.3, self.training)"),
    ("F.dropout(out, 0.3)", "F.dropout(out, 0.3, training=self.training)"),
    ("torch.dropout(out, 0.3, True)", "torch.dropout(out, 0.3, self.training)"),
    ("F.dropout(\n                out,\n                p=0.3,\n            )",
     "F.dropout(\n                out,\n                p=0.3,\n                training=self.training,\n"
     "            )"),
])
def test_an_always_on_functional_dropout_gains_the_training_flag(call: str, gated: str) -> None:
    source = WIDE_BLOCK.replace("F.dropout(out, p=self.droprate, training=self.training)", call)
    callee = "torch.dropout" if call.startswith("torch") else "F.dropout"
    patch = applied(source, GateOnTraining(CallSite("WideBasic", callee)))
    assert patch.patched == source.replace(call, gated)


def test_a_dropout_that_already_follows_training_is_left_alone() -> None:
    reason = refusal(WIDE_BLOCK, GateOnTraining(CallSite("WideBasic", "F.dropout")))
    assert reason == "the dropout at line 30 already follows self.training"
    assert "is not a functional dropout" in refusal(WIDE_BLOCK, GateOnTraining(CallSite("WideBasic", "self.conv2")))


# -- declarations --------------------------------------------------------------------------------


def test_a_declared_dropout_goes_after_the_named_attribute_in_the_files_spelling() -> None:
    patch = applied(WIDE_BLOCK, DeclareDropout("WideBasic", "drop", "drop_rate", after="conv2"))
    assert patch.patched == WIDE_BLOCK.replace('''                               padding=1, bias=False)
        self.droprate''', '''                               padding=1, bias=False)
        self.drop = nn.Dropout(p=drop_rate)
        self.droprate''')
    assert changed_lines(patch) == (0, 1)


@pytest.mark.parametrize("imports, reference, added_import", [
    ("import torch\n", "torch.nn.Dropout", None),
    ("from torch import nn as tnn\n", "tnn.Dropout", None),
    ("from torch.nn import Module, Dropout as Drop\n", "Drop", None),
    ("from torch.nn import (\n    Module,\n    Conv2d,\n)\n", "Dropout",
     "from torch.nn import (\n    Module,\n    Conv2d,\n    Dropout,\n)\n"),
    ("import torch.nn.functional as F\nfrom mylib import Module\n", "nn.Dropout",
     "import torch.nn.functional as F\nfrom mylib import Module\nimport torch.nn as nn\n"),
])
def test_a_declaration_reaches_torch_nn_the_way_the_file_does(imports: str, reference: str,
                                                               added_import: str | None) -> None:
    source = f'''{imports}

class M(Module):
    def __init__(self):
        super().__init__()
        self.fc = None
'''
    patch = applied(source, DeclareDropout("M", "drop", 0.25))
    declared = f"        self.fc = None\n        self.drop = {reference}(p=0.25)\n"
    expected = source.replace("        self.fc = None\n", declared)
    assert patch.patched == (expected if added_import is None else expected.replace(imports, added_import))


def test_declaring_an_existing_attribute_is_refused() -> None:
    assert "self.drop is already assigned in BasicBlock.__init__ (line 14)" in refusal(
        RESNET18, DeclareDropout("BasicBlock", "drop", 0.1))
    assert "assigns no self.bn9" in refusal(RESNET18, DeclareDropout("BasicBlock", "drop9", 0.1, after="bn9"))


def test_a_channelwise_declaration_becomes_elementwise() -> None:
    source = RESNET18.replace("self.drop = nn.Dropout(p=drop_rate)", "self.drop = nn.Dropout2d(p=drop_rate)")
    patch = applied(source, MakeElementwise("BasicBlock", "drop"))
    assert patch.patched == RESNET18 and changed_lines(patch) == (1, 1)
    assert "not declared in BasicBlock.__init__ as a channel-wise dropout" in refusal(
        RESNET18, MakeElementwise("BasicBlock", "drop"))


# -- nn.Sequential -------------------------------------------------------------------------------


def test_a_dropout_moves_past_parameter_free_neighbours_in_a_sequential() -> None:
    patch = applied(SEQUENTIAL_NET, MoveInSequential("SmallNet", "features", 6, 8),
                    MoveInSequential("SmallNet", "classifier", 3, 2))
    assert patch.patched == SEQUENTIAL_NET.replace('''            nn.Dropout(0.2),  # after the BatchNorm
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
''', '''            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Dropout(0.2),  # after the BatchNorm
''').replace("nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.5),", "nn.Linear(32, 32), nn.Dropout(0.5), nn.ReLU(),")


def test_a_sequential_move_that_renames_keys_is_refused() -> None:
    reason = refusal(SEQUENTIAL_NET, MoveInSequential("SmallNet", "features", 3, 5))
    assert "would rename state_dict keys (features.4.* -> features.3.*, features.5.* -> features.4.*)" in reason
    assert "is `nn.ReLU(inplace=True)`, not a torch.nn dropout" in refusal(
        SEQUENTIAL_NET, MoveInSequential("SmallNet", "features", 2, 3))


def test_a_one_line_sequential_keeps_its_separators_when_the_last_element_moves() -> None:
    source = '''import torch.nn as nn


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.ReLU())
'''
    patch = applied(source, MoveInSequential("Head", "fc", 1, 2))
    assert patch.patched == source.replace("nn.Dropout(0.5), nn.ReLU())", "nn.ReLU(), nn.Dropout(0.5))")


def test_the_models_own_state_flags_decide_a_sequential_move() -> None:
    has_state = (True, True, False, False, False, True, False, False, False)  # as if features[4] held nothing
    patch = applied(SEQUENTIAL_NET, MoveInSequential("SmallNet", "features", 3, 4, has_state=has_state))
    assert "            nn.Conv2d(16, 32, 3, padding=1),\n            nn.Dropout2d(0.1),  # spatial" in patch.patched


def test_key_renames_of_a_sequential_move() -> None:
    flags = [True, False, False, True, False]
    assert sequential_key_renames(flags, 2, 1) == {}
    assert sequential_key_renames(flags, 1, 2) == {}
    assert sequential_key_renames(flags, 1, 4) == {3: 2}
    assert sequential_key_renames(flags, 4, 0) == {0: 1, 3: 4}


def test_a_sequential_element_becomes_elementwise() -> None:
    patch = applied(SEQUENTIAL_NET, MakeElementwise("SmallNet", "features", element=3))
    assert patch.patched == SEQUENTIAL_NET.replace("nn.Dropout2d(0.1),", "nn.Dropout(0.1),")


def test_a_sequential_not_written_as_one_literal_is_refused() -> None:
    assert "self.layer1 is not an nn.Sequential(...) literal" in refusal(
        RESNET18, MoveInSequential("ResNet", "layer1", 0, 1))
    assert "self.shortcut is assigned 2 times" in refusal(RESNET18, MoveInSequential("BasicBlock", "shortcut", 0, 1))


# -- formatting ----------------------------------------------------------------------------------


ODD_FIXED = ODD.replace('''
        # pool, then classify
        y = F.adaptive_avg_pool2d( y, 1 ).flatten( 1 )
        y = F.dropout( y, self.p )  # always on!
''', '''
        y = F.dropout(y, self.p, training=self.training)  # always on!
        # pool, then classify
        y = F.adaptive_avg_pool2d( y, 1 ).flatten( 1 )
''')
ODD_FIX = [GateOnTraining(CallSite("Odd", "F.dropout")),
           MoveDropout(CallSite("Odd", "F.dropout"), to=CallSite("Odd", "F.adaptive_avg_pool2d"))]


def test_comments_and_odd_formatting_survive_outside_the_edited_lines() -> None:
    patch = applied(ODD, *ODD_FIX)
    assert patch.patched == ODD_FIXED
    assert changed_lines(patch) == (1, 1)


def test_windows_line_endings_are_kept() -> None:
    crlf = ODD.replace("\n", "\r\n")
    patch = applied(crlf, *ODD_FIX)
    assert patch.patched == ODD_FIXED.replace("\n", "\r\n")


def test_a_byte_order_mark_and_a_missing_final_newline_are_kept() -> None:
    source = "\ufeff" + RESNET18.rstrip("\n")
    patch = applied(source, BLOCK_FIX, HEAD_FIX)
    assert patch.patched == "\ufeff" + applied(RESNET18, BLOCK_FIX, HEAD_FIX).patched.rstrip("\n")


def test_a_new_statement_takes_the_blocks_indentation() -> None:
    tabs = RESNET18.replace("    ", "\t")
    patch = applied(tabs, BLOCK_FIX)
    assert "\t\tout = self.bn2(self.conv2(out))\n\t\tout = self.drop(out)  # regularise between the convolutions\n" \
        "\t\tout += self.shortcut(x)" in patch.patched
    assert changed_lines(patch) == (1, 1)


def test_a_file_that_is_not_python_is_a_clean_error() -> None:
    with pytest.raises(DropcheckError, match="cannot parse"):
        patch_source("class M(:\n", [], "broken.py")


# -- writing -------------------------------------------------------------------------------------


def test_write_patch_replaces_the_file_and_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.py"
    path.write_text(RESNET18, encoding="utf-8")
    path.chmod(0o640)
    patch = patch_source(read_source(path), [BLOCK_FIX], str(path))
    assert write_patch(patch) == path.resolve()
    assert path.read_text(encoding="utf-8") == patch.patched
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet18.py"]  # no temporary file left


def test_write_patch_refuses_a_file_that_changed_since_it_was_read(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.py"
    path.write_text(RESNET18, encoding="utf-8")
    patch = patch_source(read_source(path), [BLOCK_FIX], str(path))
    path.write_text(RESNET18 + "# edited meanwhile\n", encoding="utf-8")
    with pytest.raises(DropcheckError, match="changed since dropcheck read it"):
        write_patch(patch)
    assert path.read_text(encoding="utf-8").endswith("# edited meanwhile\n")


def test_write_patch_writes_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.py"
    real.write_text(RESNET18, encoding="utf-8")
    link = tmp_path / "model.py"
    link.symlink_to(real)
    write_patch(patch_source(read_source(link), [BLOCK_FIX], str(link)))
    assert link.is_symlink() and real.read_text(encoding="utf-8") == applied(RESNET18, BLOCK_FIX).patched


# -- end to end: the patched model is the original model, with its dropout elsewhere ---------------


@pytest.fixture
def torch():
    """torch on one thread: tiny CPU models on a shared machine run many times faster without contention."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield torch
    finally:
        torch.set_num_threads(threads)


def _import_source(source: str, folder: Path, name: str):
    path = folder / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"dropcheck_test_{name}_{os.getpid()}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_same_model(torch, original_source: str, patched_source: str, build, shape, tmp_path: Path) -> None:
    original_module = _import_source(original_source, tmp_path, "original")
    patched_module = _import_source(patched_source, tmp_path, "patched")
    torch.manual_seed(0)
    original = build(original_module)
    torch.manual_seed(0)
    patched = build(patched_module)
    patched.load_state_dict(original.state_dict(), strict=True)
    original.eval()
    patched.eval()
    with torch.no_grad():
        for seed in range(2):
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
            assert torch.equal(original(x), patched(x))
    assert _drops_in_train_mode(patched, torch.randn(*shape), torch)


def _drops_in_train_mode(model, x, torch) -> bool:
    """Every dropout module runs in train mode and at least one zeroes something."""
    zeroed = {}

    def hook(module, inputs, output):
        zeroed[module] = bool(((inputs[0] != 0) & (output == 0)).any())

    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    handles = [m.register_forward_hook(hook) for m in dropouts]
    try:
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return len(zeroed) == len(dropouts) and any(zeroed.values())


def test_patched_cifar_resnet18_loads_the_original_weights_and_matches_it_in_eval(torch, tmp_path: Path) -> None:
    patched = applied(RESNET18, BLOCK_FIX, HEAD_FIX).patched
    # one block per stage instead of two: the same classes and code paths, half the time
    _check_same_model(torch, RESNET18, patched, lambda module: module.ResNet(module.BasicBlock, [1, 1, 1, 1]),
                      (1, 3, 32, 32), tmp_path)


def test_patched_sequential_net_loads_the_original_weights_and_matches_it_in_eval(torch, tmp_path: Path) -> None:
    patched = applied(SEQUENTIAL_NET, MoveInSequential("SmallNet", "features", 6, 7),
                      MakeElementwise("SmallNet", "features", element=3),
                      MoveInSequential("SmallNet", "classifier", 3, 2)).patched
    _check_same_model(torch, SEQUENTIAL_NET, patched, lambda module: module.SmallNet(), (2, 3, 16, 16), tmp_path)


def test_patched_preact_block_matches_the_original_in_eval(torch, tmp_path: Path) -> None:
    preact = applied(PREACT_BLOCK, RemoveDropout(CallSite("PreActBlock", "self.drop", occurrence=0))).patched
    _check_same_model(torch, PREACT_BLOCK, preact, lambda module: module.PreActBlock(8, 16, stride=2),
                      (2, 8, 8, 8), tmp_path)


def test_a_moved_guarded_functional_dropout_still_follows_train_and_eval(torch, tmp_path: Path) -> None:
    wide = applied(WIDE_BLOCK_PRE_BN,
                   MoveDropout(CallSite("WideBasic", "F.dropout"), to=CallSite("WideBasic", "self.conv2"))).patched
    original = _import_source(WIDE_BLOCK_PRE_BN, tmp_path, "original").WideBasic(8, 8, 1, drop_rate=0.3)
    fixed = _import_source(wide, tmp_path, "patched").WideBasic(8, 8, 1, drop_rate=0.3)
    fixed.load_state_dict(original.state_dict(), strict=True)
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(original.eval()(x), fixed.eval()(x))
        torch.manual_seed(1)
        first = fixed.train()(x)
        torch.manual_seed(2)
        assert not torch.equal(first, fixed(x))  # the functional dropout still drops in train mode
