"""The checks of a patched source, run by source_verify in a fresh Python in the patched copy.

`python -m dropcheck.fixer.source_worker` imports torch and dropcheck, then waits for one request
on stdin, `{"payload": PATH, "tree": DIR}` (so the imports overlap the fixing process's own work);
it then imports the target from the copy in DIR, builds it with the original's constructor arguments
and prints the checks as one JSON list on its last line of stdout.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ..analysis.capture import capture_graph
from ..analysis.catalog import describe_codes, verified_by_fix
from ..analysis.check import repeated_in_branch
from ..analysis.load import load_target
from ..analysis.pipeline import audit_captured
from ..records import Check, DropcheckError
from .plan import plan_fix
from .source_fix import plan_source_fix
from .verify import PROBED, VERIFY_THREADS, eval_mode, loaded, same_outputs


def run_checks(payload: dict[str, Any]) -> list[Check]:
    try:
        target = load_target(payload["spec"], payload["model_args"], tuple(payload["input_shape"]) or None,
                             weights=True)
    except DropcheckError as exc:  # load's own words: where the import or the build failed, and how
        return [Check("fresh import", False, f"the patched copy did not load: {exc.message}")]
    except Exception as exc:  # noqa: BLE001 - whatever stops the import is the check's answer
        return [Check("fresh import", False, f"{type(exc).__name__}: {_first_line(exc)}")]
    model = target.model
    checks = [Check("fresh import", True, "the patched source imports and builds with the same arguments")]
    key_map = payload.get("key_map") or {}  # renamed keys: the original's state_dict as its converted checkpoint
    state = {key_map.get(k, k): v for k, v in payload["state_dict"].items()}
    through = f" through the key mapping ({len(key_map)} renamed)" if key_map else ""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        return checks + [Check("state_dict", False, f"the original's checkpoint does not load{through}: "
                               f"{_first_line(exc)}")]
    checks.append(Check("state_dict", True, f"the original's {len(state)} keys load with strict=True{through}"))
    against = "the original with its always-on dropout switched off" if payload["always_on"] else "the original"
    probe = {key_map.get(k, k): v for k, v in payload["probe_state"].items()}
    differ: list[str] = []
    with eval_mode(model), torch.no_grad():
        for weights, state, expected in (("its own weights", None, payload["expected"]),
                                         ("randomised BatchNorm statistics", probe, payload["probe_expected"])):
            with loaded(model, state):
                differ += [f"#{i} ({weights})" for i, (x, y) in enumerate(zip(payload["inputs"], expected))
                           if not same_outputs(y, model(*x))]
    checks.append(Check("eval outputs", not differ, f"bit-identical to {against} on {len(payload['inputs'])} "
                        f"random inputs ({PROBED})" if not differ else
                        f"differ from {against} on random input {differ[0]}"))
    capture = capture_graph(target)
    analysis, report = audit_captured(target, capture, ignores=False)
    if any(s.active for s in analysis.sites):
        checks.append(_still_drops(model, payload["inputs"][0]))
    verified, fixed, before = verified_by_fix(), set(payload["fixed"]), set(payload["original_sites"])
    plan = plan_fix(capture, analysis, None, None, repeated_in_branch(analysis.sites))
    # DC002 stays on a dropout placed after the head's last BatchNorm on purpose (the plan says so)
    left = sorted({f"{f.rule} on {f.dropout}" for f in report.findings
                   if f.rule in verified and (f.dropout in fixed or f.dropout not in before)
                   and not (f.rule == "DC002" and f.dropout in plan.after_pool)})
    checks.append(Check("re-audit", not left, f"no {describe_codes(verified)} findings on the fixed or added sites"
                        if not left else "; ".join(left)))
    if payload.get("p_written"):
        checks.append(_planned_p(analysis.sites, payload["p_written"]))
    again = plan_source_fix(capture, analysis, plan, Path.cwd())
    changed = [p.path for p in again.patches]
    checks.append(Check("idempotent", not changed, "fixing the patched source changes nothing" if not changed
                        else f"a second fix would change {', '.join(changed)}"))
    return checks


def _still_drops(model: torch.nn.Module, inputs: tuple[Any, ...]) -> Check:
    flags = {m: m.training for m in model.modules()}
    model.train()
    try:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            first = model(*inputs)
            torch.manual_seed(1)
            second = model(*inputs)
    finally:
        for m, flag in flags.items():
            m.training = flag
    drops = not same_outputs(first, second)
    return Check("train mode", drops, "still drops: two seeds give different outputs" if drops
                 else "no dropout is live in train mode: two seeds give the same outputs")


def _planned_p(sites: list[Any], written: list[tuple[str, float]]) -> Check:
    """The dropouts whose p the patch wrote carry it (a functional one: some dropout its module calls)."""
    wrong = []
    for module, p in written:
        found = [s.p for s in sites if s.module == module]
        if p not in found:
            wrong.append(f"{module} has p={', '.join(f'{q:g}' for q in found) or 'no dropout'}, not {p:g}")
    shown = ", ".join(f"{module} p={p:g}" for module, p in written)
    return Check("p", not wrong, f"the written p is the planned one ({shown})" if not wrong else "; ".join(wrong))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def main() -> int:
    torch.set_num_threads(min(VERIFY_THREADS, torch.get_num_threads()))  # as the expected outputs were made
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the fixing process needed no check after all
    request = json.loads(line)
    os.chdir(request["tree"])  # the copy's root: file specs are relative to it, and its packages import
    sys.path.insert(0, request["tree"])
    payload = torch.load(request["payload"], weights_only=False)
    print(json.dumps([c.to_dict() for c in run_checks(payload)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
