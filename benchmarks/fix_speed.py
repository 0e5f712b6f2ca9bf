"""How much does `dropcheck fix` of a user's file cost against the audit of the same file?

Run:  .venv/bin/python benchmarks/fix_speed.py [--repeat N] [--quick] [--plain] [--models NAME ...]

Issue 12's target: fix of a user file costs at most 2x `audit FILE` (same file, same input shape,
the file's INPUT_SHAPE). Two fix paths are timed: `fix FILE --dry-run` (the graph rewrite, verified
in process) and `fix FILE --diff` (the patch to the user's source, what a user file gets by default,
verified in a fresh Python). Models are user-style files in benchmarks/models/ (a CIFAR EfficientNet-B0
and a CIFAR ResNet-18).

1. Wall time. `python -m dropcheck audit FILE --format json` and `python -m dropcheck fix FILE
   --dry-run --format json`, each in a fresh subprocess with the same Python and environment,
   alternating so both share the machine's noise, after one untimed run of each (which must
   succeed: the audit finishes, the fix verifies). Medians of --repeat runs, their ratio, PASS/FAIL.
2. Where fix's time goes. In a fresh subprocess (this script with a hidden --phases flag), the fix
   pipeline's stages are wrapped with timers and `fix_target` runs once; each stage's *own* time
   (its callees' excluded) is reported under its call path, e.g. `verify > capture > shapes` is
   the shape propagation of the fixed model's re-capture. Medians over --repeat subprocesses.

The exit status is 0 whatever the verdicts; 2 only when a subprocess failed.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_speed import PY, REPO, ChildFailed, Out, fmt_s, run_child, verdict  # noqa: E402

TARGET = 2.0  # fix / audit, ratio of medians (issue 12)
MODELS = {
    "cifar_efficientnet": "benchmarks/models/cifar_efficientnet.py",
    "cifar_resnet18": "benchmarks/models/cifar_resnet18.py",
}
AUDIT_OK = (0, 1)  # exit 1: findings at or above --fail-on, still a finished audit

# (module, attribute, label): the stages of fix, wrapped where their callers look them up.
# A missing attribute is skipped, so the breakdown survives refactoring (it then shows as "other").
STAGES = [
    ("dropcheck.analysis.load", "load_target", "load"),
    ("dropcheck.analysis.capture", "capture_graph", "capture"),
    ("dropcheck.analysis.capture", "_trace_train", "trace train"),
    ("dropcheck.analysis.capture", "_trace_eval", "trace eval"),
    ("dropcheck.analysis.capture", "_eval_live_dropouts", "eval-live dropouts"),
    ("dropcheck.analysis.capture", "propagate_shapes", "shapes"),
    ("dropcheck.analysis.capture", "build_flow_graph", "flow graph"),
    ("dropcheck.analysis.sites", "find_sites", "sites"),
    ("dropcheck.fixer.plan", "plan_fix", "plan"),
    ("dropcheck.fixer.rewrite", "build_fixed", "rewrite"),
    ("dropcheck.fixer.rewrite", "make_fixed_model", "FixedModel"),
    ("dropcheck.fixer.verify", "verify_fix", "verify"),
    ("dropcheck.fixer.verify", "_same_eval_outputs", "eval outputs"),
    ("dropcheck.fixer.verify", "_same_state_dict", "state_dict"),
    ("dropcheck.fixer.verify", "_train_mode_drops", "train mode drops"),
    ("dropcheck.fixer.pipeline", "audit_captured", "re-audit rules"),
    ("dropcheck.fixer.fixed", "graph_source", "code before"),
]


# --- the in-process breakdown (child) ------------------------------------------------------------

def _install_timers(own: dict[str, float]) -> None:
    stack: list[list] = []  # [path, started, callee seconds]

    def wrap(fn, label):
        def timed(*args, **kwargs):
            path = f"{stack[-1][0]} > {label}" if stack else label
            frame = [path, time.perf_counter(), 0.0]
            stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                stack.pop()
                spent = time.perf_counter() - frame[1]
                own[path] += spent - frame[2]
                if stack:
                    stack[-1][2] += spent
        timed.__wrapped__ = fn
        return timed

    for module_name, attr, label in STAGES:
        module = importlib.import_module(module_name)
        if hasattr(module, attr):
            setattr(module, attr, wrap(getattr(module, attr), label))


def phases_child(path: str) -> None:
    started = time.perf_counter()
    import torch  # noqa: F401 - imports are their own phase
    from dropcheck.fixer.pipeline import fix_target
    imported = time.perf_counter()
    own: dict[str, float] = defaultdict(float)
    _install_timers(own)
    t0 = time.perf_counter()
    result = fix_target(path)
    total = time.perf_counter() - t0
    if not result.ok:
        print(f"fix did not verify: {[(c.name, c.detail) for c in result.checks if not c.ok]}", file=sys.stderr)
        sys.exit(2)
    own["other"] = total - sum(own.values())
    print(json.dumps({"imports": imported - started, "fix": total, "own": own}))


# --- wall times (parent) -------------------------------------------------------------------------

def audit_argv(path: str) -> list[str]:
    return [PY, "-m", "dropcheck", "audit", path, "--format", "json", "--no-cache"]  # a fresh audit each run


def fix_argv(path: str) -> list[str]:
    return [PY, "-m", "dropcheck", "fix", path, "--dry-run", "--format", "json"]


def patch_argv(path: str) -> list[str]:
    return [PY, "-m", "dropcheck", "fix", path, "--diff", "--format", "json"]


def bench_model(path: str, repeat: int) -> tuple[list[float], list[float], list[float], list[dict]]:
    run_child(audit_argv(path), ok_codes=AUDIT_OK)  # must succeed; warms the file cache
    _, text = run_child(fix_argv(path), capture=True)  # exit 0: every check passed
    run_child(patch_argv(path), ok_codes=AUDIT_OK)  # 1: the patch is not applied, so findings remain
    audits, fixes, patches, phases = [], [], [], []
    for _ in range(repeat):
        audits.append(run_child(audit_argv(path), ok_codes=AUDIT_OK)[0].wall_s)
        fixes.append(run_child(fix_argv(path))[0].wall_s)
        patches.append(run_child(patch_argv(path), ok_codes=AUDIT_OK)[0].wall_s)
    for _ in range(repeat):
        _, text = run_child([PY, __file__, "--phases", path], capture=True)
        phases.append(json.loads(text.strip().splitlines()[-1]))
    return audits, fixes, patches, phases


def phase_rows(phases: list[dict]) -> list[list[str]]:
    fix_med = statistics.median(p["fix"] for p in phases)
    paths = sorted({k for p in phases for k in p["own"]}, key=lambda k: (k == "other",))
    order = []
    for p in phases:  # first-seen order of the first run, then the rest
        order += [k for k in p["own"] if k not in order]
    rows = [["imports (torch, dropcheck)", fmt_s(statistics.median(p["imports"] for p in phases)), ""]]
    for key in [k for k in order if k != "other"] + (["other"] if "other" in paths else []):
        med = statistics.median(p["own"].get(key, 0.0) for p in phases)
        rows.append([key, fmt_s(med), f"{100 * med / fix_med:.0f}%"])
    rows.append(["fix_target (in process, total)", fmt_s(fix_med), "100%"])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each command (default 3)")
    ap.add_argument("--quick", action="store_true", help="smoke run: --repeat 1")
    ap.add_argument("--plain", action="store_true", help="plain text even if rich is installed")
    ap.add_argument("--models", nargs="*", choices=sorted(MODELS), default=sorted(MODELS))
    ap.add_argument("--phases", help=argparse.SUPPRESS)  # child: the in-process breakdown of one file
    args = ap.parse_args(argv)
    if args.phases:
        phases_child(args.phases)
        return 0
    repeat = 1 if args.quick else max(1, args.repeat)
    out = Out(args.plain)
    threads_env = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))
    out.line(f"machine: {platform.machine()} {platform.system()}, cpu_count={os.cpu_count()}, {threads_env}; "
             f"python {platform.python_version()} ({PY}); repeat={repeat}")
    load_before = os.getloadavg()
    summary = []
    for name in args.models:
        path = MODELS[name]
        try:
            audits, fixes, patches, phases = bench_model(path, repeat)
        except ChildFailed as exc:
            out.line(f"benchmark aborted: {exc}")
            return 2
        ratio = statistics.median(fixes) / statistics.median(audits)
        patch_ratio = statistics.median(patches) / statistics.median(audits)
        rows = [[label, fmt_s(min(xs)), fmt_s(statistics.median(xs)), fmt_s(max(xs))]
                for label, xs in (("audit FILE", audits), ("fix FILE --dry-run", fixes), ("fix FILE --diff", patches))]
        out.table(f"{name} ({path}): fresh subprocess each, wall seconds", ["command", "min", "med", "max"], rows)
        out.line(f"   ratio of medians fix --dry-run/audit = {ratio:.2f}  (target <= {TARGET})  {verdict(ratio <= TARGET)}")
        out.line(f"   ratio of medians fix --diff/audit = {patch_ratio:.2f}  (target <= {TARGET})  "
                 f"{verdict(patch_ratio <= TARGET)}")
        out.line()
        out.table(f"{name}: fix's own time per stage (in process, median of {len(phases)})",
                  ["stage (call path)", "s", "share"], phase_rows(phases))
        summary.append(f"{name} --dry-run {ratio:.2f}x {verdict(ratio <= TARGET)}, "
                       f"--diff {patch_ratio:.2f}x {verdict(patch_ratio <= TARGET)}")
    load_after = os.getloadavg()
    out.line(f"loadavg(1m) {load_before[0]:.2f} -> {load_after[0]:.2f}")
    out.line("summary: " + ", ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
