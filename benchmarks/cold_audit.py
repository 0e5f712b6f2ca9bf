"""How much does a cold `dropcheck audit` of a small user file cost beyond `import torch`?

Run:  .venv/bin/python benchmarks/cold_audit.py [--repeat N] [--model FILE[:Name]]

Issue 15's target: a cold audit of a small user file costs at most `import torch` + 1 s, and imports
neither timm nor torchvision. Both commands run in fresh subprocesses of this Python, alternating so
that they share the machine's noise: `python -c "import torch"` and `python -m dropcheck audit FILE
--no-cache --fail-on never`, after one untimed run of each. Medians of --repeat runs, their
difference, PASS/FAIL; then one `-X importtime` run of the audit says whether timm or torchvision
was imported. The default model is a CIFAR ResNet-18 written as users write it
(benchmarks/models/cifar_resnet18.py).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_S = 1.0


def _timed(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=HERE.parent)
    if done.returncode not in (0, 1):
        sys.exit(f"failed ({done.returncode}): {' '.join(args)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model", default=str(HERE / "models" / "cifar_resnet18.py"))
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # installed code has bytecode
    torch_cmd = [sys.executable, "-c", "import torch"]
    audit_cmd = [sys.executable, "-m", "dropcheck", "audit", args.model, "--no-cache", "--fail-on", "never"]
    _timed(torch_cmd, env), _timed(audit_cmd, env)  # untimed: caches warm for both
    torch_s, audit_s = [], []
    for _ in range(args.repeat):
        torch_s.append(_timed(torch_cmd, env))
        audit_s.append(_timed(audit_cmd, env))
    t, a = statistics.median(torch_s), statistics.median(audit_s)
    verdict = "PASS" if a - t <= TARGET_S else "FAIL"
    print(f"import torch {t:.2f} s, cold audit {a:.2f} s (medians of {args.repeat}): audit - torch = {a - t:.2f} s "
          f"(target <= {TARGET_S:.1f} s) {verdict}")
    trace = subprocess.run([sys.executable, "-X", "importtime", *audit_cmd[1:]], capture_output=True, text=True,
                           env=env, cwd=HERE.parent)
    imported = {line.rsplit("|", 1)[-1].strip() for line in trace.stderr.splitlines() if "|" in line}
    heavy = sorted(name for name in imported if name in ("timm", "torchvision", "matplotlib", "sklearn"))
    shown = ", ".join(heavy) if heavy else "none of timm, torchvision, matplotlib, sklearn"
    print(f"imported beyond torch and dropcheck's own: {shown}; load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
