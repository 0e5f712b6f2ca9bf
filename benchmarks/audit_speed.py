"""How fast, and how lean, is `dropcheck audit` against what it cannot avoid?

Run:  .venv/bin/python benchmarks/audit_speed.py [--repeat N] [--quick]

Every number is a ratio (or a difference) against a baseline measured in the same run, in the
same kind of fresh subprocess, with the same Python (sys.executable) and the same environment
(OMP_NUM_THREADS / MKL_NUM_THREADS are passed through untouched). Runs alternate between the
baseline and the audit so that both share the machine's noise.

1. resnet50 wall time: `python -m dropcheck audit torchvision:resnet50 --format json` against the
   floor, a bare script that imports torch and torchvision, builds resnet50(weights=None) and
   torch.fx.symbolic_trace()s it. Target (design section 8): ratio of medians <= 1.25.
2. Large timm models captured on the meta device (vit_large_patch16_224, efficientnet_b7): the
   audit's wall time and peak RSS against a subprocess that only imports torch, torchvision and
   timm. Target: peak RSS less than 1 GiB beyond the imports.

Peak RSS is each child's own ru_maxrss, read with os.wait4 on that child. Nothing is downloaded
(weights=None / pretrained=False everywhere). Targets print PASS/FAIL; the exit status is 0 unless
a subprocess failed (2), so a slow machine never breaks a build: read the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
GIB = 1024 ** 3
TIME_TARGET = 1.25          # audit / floor, ratio of medians (design section 8)
MEM_TARGET = 1 * GIB        # audit peak RSS beyond the imports (design section 8)
CHILD_TIMEOUT_S = 900

RESNET = "torchvision:resnet50"
LARGE = ("timm:vit_large_patch16_224", "timm:efficientnet_b7")

FLOOR_SRC = (
    "import torch, torchvision\n"
    "m = torchvision.models.resnet50(weights=None)\n"
    "torch.fx.symbolic_trace(m)\n"
)
IMPORTS_SRC = "import torch, torchvision, timm\n"
INFO_SRC = (
    "import json, torch, torchvision, timm\n"
    "print(json.dumps({'torch': torch.__version__, 'torchvision': torchvision.__version__,\n"
    "                  'timm': timm.__version__, 'threads': torch.get_num_threads()}))\n"
)
# Fallback while the CLI is unfinished: the pipeline's own entry point, same JSON on stdout.
API_SRC = (
    "import json, sys\n"
    "from dropcheck.analysis.pipeline import audit_target\n"
    "r = audit_target(sys.argv[1], None, None)\n"
    "print(json.dumps({'schema': 1, 'results': [r.to_dict()]}, indent=2))\n"
    "sys.exit(0 if r.status == 'ok' else 2)\n"
)


class ChildFailed(RuntimeError):
    pass


@dataclass
class Sample:
    wall_s: float
    maxrss: int  # bytes


@dataclass
class Series:
    label: str
    samples: list[Sample] = field(default_factory=list)

    def walls(self) -> list[float]:
        return [s.wall_s for s in self.samples]

    def rss(self) -> list[int]:
        return [s.maxrss for s in self.samples]

    @property
    def wall_min(self) -> float:
        return min(self.walls())

    @property
    def wall_med(self) -> float:
        return statistics.median(self.walls())

    @property
    def rss_med(self) -> float:
        return statistics.median(self.rss())

    @property
    def rss_max(self) -> int:
        return max(self.rss())


# --- running children ----------------------------------------------------------------------------

def _maxrss_bytes(ru_maxrss: int) -> int:
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024  # Linux reports KiB


def run_child(argv: list[str], *, capture: bool = False, ok_codes: tuple[int, ...] = (0,)) -> tuple[Sample, str]:
    """Run one fresh subprocess; its wall time and its own peak RSS (os.wait4 on that pid)."""
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=REPO, env=os.environ.copy(), stdin=subprocess.DEVNULL,
                                stdout=out if capture else subprocess.DEVNULL, stderr=err)
        deadline = started + CHILD_TIMEOUT_S
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.002)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
        code = proc.returncode
        if code not in ok_codes:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-15:]
            raise ChildFailed(f"{' '.join(argv[1:])!r} exited {code}:\n    " + "\n    ".join(tail))
        text = ""
        if capture:
            out.seek(0)
            text = out.read().decode(errors="replace")
        return Sample(wall, _maxrss_bytes(usage.ru_maxrss)), text


def cli_works() -> bool:
    try:
        run_child([PY, "-m", "dropcheck", "audit", "--help"])
        return True
    except ChildFailed:
        return False


def audit_argv(spec: str, use_cli: bool) -> list[str]:
    if use_cli:
        return [PY, "-m", "dropcheck", "audit", spec, "--format", "json", "--no-cache"]  # a fresh audit each run
    return [PY, "-c", API_SRC, spec]


# exit 1 means findings at or above --fail-on: still a finished audit
AUDIT_OK = (0, 1)


def check_audit(spec: str, use_cli: bool, want_meta: bool) -> dict:
    """One untimed run: the audit really succeeded (and captured on meta where expected); warms caches."""
    _, text = run_child(audit_argv(spec, use_cli), capture=True, ok_codes=AUDIT_OK)
    result = json.loads(text)["results"][0]
    if result["status"] != "ok":
        raise ChildFailed(f"{spec}: status {result['status']}: {result.get('error')}")
    device = (result.get("capture") or {}).get("device")
    if want_meta and device != "meta":
        raise ChildFailed(f"{spec}: captured on {device!r}, not on the meta device")
    return result


# --- presentation --------------------------------------------------------------------------------

def fmt_s(x: float) -> str:
    return f"{x:.2f}"


def fmt_mib(x: float) -> str:
    return f"{x / 2**20:,.0f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


class Out:
    """rich when it is there, plain text otherwise."""

    def __init__(self, plain: bool) -> None:
        self.console = None
        if not plain:
            try:
                from rich.console import Console
                self.console = Console(highlight=False, soft_wrap=True)
            except ImportError:
                self.console = None

    def line(self, text: str = "") -> None:
        if self.console is not None:
            self.console.print(text, markup=False)
        else:
            print(text, flush=True)

    def table(self, title: str, headers: list[str], rows: list[list[str]]) -> None:
        if self.console is not None:
            from rich import box
            from rich.table import Table
            t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
            for i, h in enumerate(headers):
                t.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
            for r in rows:
                t.add_row(*r)
            self.console.print(t)
            return
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print(title)
        print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        print(flush=True)


# --- the benchmarks ------------------------------------------------------------------------------

def bench_resnet(repeat: int, use_cli: bool) -> tuple[Series, Series, float]:
    floor, audit = Series("floor (import, build, trace)"), Series(f"audit {RESNET}")
    inner = check_audit(RESNET, use_cli, want_meta=False)["seconds"]  # also warms the page cache
    run_child([PY, "-c", FLOOR_SRC])
    for _ in range(repeat):
        floor.samples.append(run_child([PY, "-c", FLOOR_SRC])[0])
        audit.samples.append(run_child(audit_argv(RESNET, use_cli), ok_codes=AUDIT_OK)[0])
    return floor, audit, inner


def bench_large(repeat: int, use_cli: bool) -> tuple[Series, dict[str, Series], dict[str, float]]:
    base = Series("imports only")
    audits = {spec: Series(spec.split(":", 1)[1]) for spec in LARGE}
    inner = {spec: check_audit(spec, use_cli, want_meta=True)["seconds"] for spec in LARGE}
    for _ in range(repeat):
        base.samples.append(run_child([PY, "-c", IMPORTS_SRC])[0])
        for spec in LARGE:
            audits[spec].samples.append(run_child(audit_argv(spec, use_cli), ok_codes=AUDIT_OK)[0])
    return base, audits, inner


def machine_info() -> dict:
    _, text = run_child([PY, "-c", INFO_SRC], capture=True)  # also warms the imports
    info = json.loads(text)
    try:
        info["affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["affinity"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each command (default 3)")
    ap.add_argument("--quick", action="store_true", help="smoke run: --repeat 1")
    ap.add_argument("--plain", action="store_true", help="plain text even if rich is installed")
    args = ap.parse_args(argv)
    repeat = 1 if args.quick else max(1, args.repeat)
    out = Out(args.plain)

    try:
        info = machine_info()
        use_cli = cli_works()
        load_before = os.getloadavg()
        floor, audit, resnet_inner = bench_resnet(repeat, use_cli)
        base, audits, large_inner = bench_large(repeat, use_cli)
        load_after = os.getloadavg()
    except ChildFailed as exc:
        out.line(f"benchmark aborted: {exc}")
        return 2

    threads_env = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))
    out.line(f"machine: {platform.machine()} {platform.system()}, cpu_count={os.cpu_count()} "
             f"(usable {info['affinity']}), torch threads={info['threads']}, {threads_env}")
    out.line(f"python {platform.python_version()} ({PY}), torch {info['torch']}, torchvision "
             f"{info['torchvision']}, timm {info['timm']}")
    out.line(f"audit via: {'python -m dropcheck audit SPEC --format json' if use_cli else 'dropcheck.analysis.pipeline.audit_target (CLI not ready)'}"
             f"; repeat={repeat}; loadavg(1m) {load_before[0]:.2f} -> {load_after[0]:.2f}")
    out.line()

    ratio = audit.wall_med / floor.wall_med
    rows = [[s.label, fmt_s(s.wall_min), fmt_s(s.wall_med), fmt_mib(s.rss_med)] for s in (floor, audit)]
    out.table("1. resnet50: audit vs floor (fresh subprocess each, wall seconds)",
              ["subprocess", "min s", "med s", "RSS MiB"], rows)
    out.line(f"   check run's JSON 'seconds' (audit_target, incl. importing torchvision): {resnet_inner:.2f} s")
    out.line(f"   ratio of medians audit/floor = {ratio:.2f}  (target <= {TIME_TARGET})  {verdict(ratio <= TIME_TARGET)}")
    out.line()

    rows = [[base.label, fmt_s(base.wall_min), fmt_s(base.wall_med), fmt_mib(base.rss_med), "", "1.00", ""]]
    mem_ok = True
    for spec, s in audits.items():
        extra_t = s.wall_med - base.wall_med
        extra_m = s.rss_med - base.rss_med
        mem_ok &= extra_m < MEM_TARGET
        rows.append([s.label, fmt_s(s.wall_min), fmt_s(s.wall_med), fmt_mib(s.rss_med),
                     f"{extra_t:+.2f}", f"{s.wall_med / base.wall_med:.2f}", f"{extra_m / 2**20:+,.0f}"])
    out.table("2. timm audits (meta device) vs importing torch+torchvision+timm",
              ["subprocess", "min s", "med s", "RSS MiB", "+s", "x", "+MiB"], rows)
    for spec, s in audits.items():
        extra_m = s.rss_med - base.rss_med
        out.line(f"   {spec}: extra peak RSS {extra_m / GIB:.3f} GiB (target < 1 GiB)  "
                 f"{verdict(extra_m < MEM_TARGET)}; check run's JSON 'seconds' {large_inner[spec]:.2f} s")
    out.line()
    out.line(f"summary: time {verdict(ratio <= TIME_TARGET)} ({ratio:.2f}x floor), "
             f"memory {verdict(mem_ok)} (max extra {max(s.rss_med - base.rss_med for s in audits.values()) / GIB:.3f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
