"""What the pre-commit hook costs: a commit where no model changed, against the first one.

Run:  .venv/bin/python benchmarks/precommit_speed.py [--repeat N]

In a fresh temporary git repository with three configured targets (small user model files, one
importing a sibling module), the hook's own command (`entry` of .pre-commit-hooks.yaml, run as
`python -m dropcheck ...` with this checkout first on PYTHONPATH, pass_filenames: false) runs:

1. cold: no .dropcheck_cache yet; every target is loaded, traced and audited (torch imported);
2. warm: nothing changed; median of N runs. Target: under 0.5 s wall, torch not imported
   (checked in one more run under `python -X importtime`, not timed);
3. one model edited (a comment): that target is audited afresh, the other two come from the cache.

Beside them, the floor every run pays: `python -m dropcheck --version` (the interpreter, the CLI's
imports: typer, rich, the records). Each run's CPU time (user + system, from rusage) is printed
beside its wall time: on a shared machine the wall time stretches, the CPU time much less. The
warm run's output must equal the cold run's, byte for byte. PYTHONDONTWRITEBYTECODE is dropped
from the runs' environment, as an installed dropcheck has its bytecode compiled. Prints PASS/FAIL for the target; exits 0 unless a run failed (2), so a slow or busy machine
never breaks a build: read the numbers.
"""
from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
WARM_TARGET_S = 0.5
TIMEOUT_S = 600
CPU: list[float] = []  # CPU seconds (user + system) of each run, in order

LAYERS = '''import torch.nn as nn


def conv_bn(c_in, c_out, p=0.0):
    """Conv, optional dropout, BatchNorm, ReLU."""
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if p:
        layers.append(nn.Dropout(p))
    return nn.Sequential(*layers, nn.BatchNorm2d(c_out), nn.ReLU())
'''
MODELS = {
    "models/small_cnn.py": '''import torch
import torch.nn as nn

from layers import conv_bn


class SmallCNN(nn.Module):
    input_shape = (2, 3, 32, 32)

    def __init__(self, p=0.2):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16), conv_bn(16, 32, p), conv_bn(32, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
''',
    "models/resblock.py": '''import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, p):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.p = p

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.dropout(out, self.p, training=self.training)
        return F.relu(x + self.bn2(self.conv2(out)))


class ResNetTiny(nn.Module):
    input_shape = (2, 3, 32, 32)

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(Block(16, 0.1), Block(16, 0.1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
''',
    "models/mlp_head.py": '''import torch
import torch.nn as nn


class MLPHead(nn.Module):
    input_shape = (2, 3, 16, 16)

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.drop(torch.flatten(self.pool(self.body(x)), 1)))
''',
}
CONFIG = '[tool.dropcheck]\ntargets = ["models/small_cnn.py", "models/resblock.py", "models/mlp_head.py"]\n'


def hook_command() -> list[str]:
    """The hook's entry and args, with `dropcheck` as `python -m dropcheck`."""
    [hook] = [h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
              if h["id"] == "dropcheck-system"]
    argv = shlex.split(hook["entry"]) + list(hook.get("args", []))
    assert argv[0] == "dropcheck" and hook["pass_filenames"] is False
    return [sys.executable, "-m", "dropcheck", *argv[1:]]


def make_project(root: Path) -> None:
    (root / "models").mkdir(parents=True)
    (root / "models" / "layers.py").write_text(LAYERS, encoding="utf-8")
    for name, text in MODELS.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "pyproject.toml").write_text(CONFIG, encoding="utf-8")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True, timeout=60)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True, timeout=60)
    subprocess.run([*git, "commit", "-q", "-m", "models"], cwd=root, check=True, timeout=60)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds and the result; the child's CPU seconds are appended to CPU."""
    cpu, started = _children_cpu(), time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    elapsed = time.perf_counter() - started
    CPU.append(_children_cpu() - cpu)
    if result.returncode not in (0, 1):
        sys.stderr.write(f"{shlex.join(command)} failed ({result.returncode}):\n{result.stderr}\n")
        sys.exit(2)
    return elapsed, result


def torch_imported(stderr: str) -> bool:
    return any(line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == "torch"
               for line in stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="warm runs (the median is reported)")
    args = parser.parse_args()
    # as a user has it: the cache on, and Python's bytecode cache written (pip compiles on install)
    env = {k: v for k, v in os.environ.items() if k not in ("DROPCHECK_NO_CACHE", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    command = hook_command()
    with tempfile.TemporaryDirectory(prefix="dropcheck-precommit-") as tmp:
        project = Path(tmp) / "project"
        make_project(project)
        floors = [run([sys.executable, "-m", "dropcheck", "--version"], project, env)[0] for _ in range(args.repeat)]
        floor_cpu = statistics.median(CPU[-args.repeat:])
        cold_s, cold = run(command, project, env)
        cold_cpu = CPU[-1]
        warm = [run(command, project, env) for _ in range(args.repeat)]
        warm_cpu = statistics.median(CPU[-args.repeat:])
        _, checked = run([command[0], "-X", "importtime", *command[1:]], project, env)
        model = project / "models" / "mlp_head.py"
        model.write_text(model.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
        edited_s, _ = run(command, project, env)
        edited_cpu = CPU[-1]
    floor, warm_s = statistics.median(floors), statistics.median(t for t, _ in warm)

    same = all(r.stdout == cold.stdout and r.returncode == cold.returncode for _, r in warm)
    no_torch = not torch_imported(checked.stderr)
    print(f"hook command: {shlex.join(['dropcheck', *command[3:]])} (3 targets, exit {cold.returncode})")
    print(f"  {'':34}{'wall':>7} {'cpu':>7}")
    print(f"  {'floor (dropcheck --version):':34}{floor:6.2f}s {floor_cpu:6.2f}s")
    print(f"  {'cold (no cache):':34}{cold_s:6.2f}s {cold_cpu:6.2f}s")
    print(f"  {'warm (nothing changed), median:':34}{warm_s:6.2f}s {warm_cpu:6.2f}s"
          f"  (wall of each: {', '.join(f'{t:.2f}' for t, _ in warm)})")
    print(f"  {'one model edited:':34}{edited_s:6.2f}s {edited_cpu:6.2f}s")
    print(f"  load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a busy machine stretches wall)")
    print(f"  warm output equals cold output:   {'yes' if same else 'NO'}")
    print(f"  torch imported on a warm run:     {'no' if no_torch else 'YES'}")
    ok = warm_s < WARM_TARGET_S and no_torch and same
    print(f"{'PASS' if ok else 'FAIL'}: warm under {WARM_TARGET_S} s without torch, same output")


if __name__ == "__main__":
    main()
