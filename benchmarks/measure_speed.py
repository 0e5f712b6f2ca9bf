"""How fast, and how lean, is `dropcheck measure` against plain forwards of the same model?

Run:  .venv/bin/python benchmarks/measure_speed.py [--repeat N] [--quick] [--device cpu|cuda]

Issue 4: measure's time per batch against two plain eval forwards of the same model and batch
(target <= 1.5x), and its peak memory against one plain forward, for torchvision resnet50
(batch 16 at 224x224, K=4 batches) and the example PreResNet at position P3 (batch 64 at 32x32,
K=8 batches). Every number is a ratio against a baseline measured in the same run.

1. Time, in this process (same threads, after a warm-up): `measure_model(capture, analysis,
   batches, device, calibrate=True, copy_model=False)` over K fixed batches, divided by K, against
   two `model.eval()` forwards under `torch.no_grad()` of each of the same batches. Capture and
   find_sites run once before and are reported apart, not counted. Runs alternate between the
   baseline and measure so both share the machine's noise; medians of --repeat runs. A third row,
   the "method floor", is the three passes measure makes (one train-mode forward, one eval forward,
   one eval forward with dropout on) without hooks: what the method costs before any statistics.
   Measure runs every batch three times, so <= 1.5x two forwards is a tight target: the floor
   alone sits near 1.5x. If a model misses it, one measure call on one batch runs under cProfile
   and the top entries print (--no-profile skips it).
2. Peak memory, each in its own fresh subprocess (this script with a hidden --child flag): the
   peak resident set (VmHWM) beyond the RSS after imports, model build and data, for one measure
   call against one plain eval forward of one batch (and, for reference, the method floor's three
   passes over the K batches without hooks). Capture runs in the measure child after that
   baseline (its leftovers count against measure); its own peak is reported apart and the peak
   is reset (/proc/self/clear_refs) before measure runs. ru_maxrss is not used on Linux: a child
   spawned by a large parent inherits the parent's peak in ru_maxrss. With --device cuda the
   memory numbers are torch.cuda.max_memory_allocated beyond what was allocated before.

Nothing is downloaded (weights=None). Targets print PASS/FAIL; the exit status is 0 unless a
subprocess or a measure call failed (2), so a slow machine never breaks a build: read the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
MIB = 2 ** 20
TIME_TARGET = 1.5           # measure per batch / two plain eval forwards (issue 4)
CHILD_TIMEOUT_S = 1800
PROFILE_TOP = 12
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the children run this file directly


@dataclass(frozen=True)
class Case:
    name: str
    spec: str
    model_args: dict | None
    batch: int
    hw: int
    k: int                  # batches per measure call

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, self.hw, self.hw)

    @property
    def label(self) -> str:
        return f"{self.name} (batch {self.batch}x3x{self.hw}x{self.hw}, K={self.k})"


CASES = (
    Case("resnet50", "torchvision:resnet50", None, 16, 224, 4),
    Case("preresnet-P3", str(REPO / "examples" / "preresnet.py"), {"position": "P3"}, 64, 32, 8),
)


# --- shared by parent and children ---------------------------------------------------------------

def _setup(case: Case, device_name: str):
    """Model (on the CPU, as load_target builds it) and the K fixed batches, seeded."""
    import torch

    from dropcheck.analysis.load import load_target

    torch.manual_seed(0)
    target = load_target(case.spec, case.model_args, case.shape, weights=True)
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(*case.shape, generator=gen) for _ in range(case.k)]
    return target, xs


def _capture(target):
    from dropcheck.analysis.capture import capture_graph
    from dropcheck.analysis.sites import find_sites

    capture = capture_graph(target)
    return capture, find_sites(capture)


def _measure(capture, analysis, xs, device):
    from dropcheck.measurement.deltas import measure_model

    return measure_model(capture, analysis, lambda: xs, device, calibrate=True, copy_model=False)


def _three_passes(model, xs) -> None:
    """What measure runs, without its hooks: train-mode forwards, eval, eval with dropout on."""
    import torch
    from torch import nn

    drops = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    with torch.no_grad():
        model.train()
        for x in xs:
            model(x)
        model.eval()
        for x in xs:
            model(x)
        for m in drops:
            m.train()
        for x in xs:
            model(x)
    model.eval()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- memory: one child per run -------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def _hwm() -> int:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource  # no /proc: ru_maxrss (may include a large parent's peak; see the docstring)

    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_main(kind: str, case_name: str, device_name: str) -> int:
    import torch

    device = torch.device(device_name)
    case = next(c for c in CASES if c.name == case_name)
    target, xs = _setup(case, device_name)
    model = target.model
    out: dict = {"kind": kind, "case": case_name}
    on_cuda = device.type == "cuda"
    capture = analysis = None
    if kind == "measure" and on_cuda:  # capture is CPU work; GPU memory is counted from below
        capture, analysis = _capture(target)
    if not on_cuda:
        out["base"] = _rss() or _hwm()
    if kind == "measure" and not on_cuda:
        capture, analysis = _capture(target)
        out["capture_peak"] = _hwm() - out["base"]
        out["reset"] = _reset_hwm()
    model.to(device)
    xs = [x.to(device) for x in xs]
    if on_cuda:
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        out["base"] = torch.cuda.memory_allocated(device)
    if kind == "measure":
        out["measurements"] = len(_measure(capture, analysis, xs, device))
    elif kind == "floor":
        _three_passes(model, xs)
    else:
        model.eval()
        with torch.no_grad():
            model(xs[0])
    _sync(device)
    out["peak"] = torch.cuda.max_memory_allocated(device) if on_cuda else _hwm()
    print(json.dumps(out))
    return 0


class ChildFailed(RuntimeError):
    pass


def run_child(kind: str, case: Case, device: str) -> dict:
    argv = [PY, str(Path(__file__).resolve()), "--child", kind, "--case", case.name, "--device", device]
    proc = subprocess.run(argv, cwd=REPO, env=os.environ.copy(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-15:]
        raise ChildFailed(f"--child {kind} --case {case.name} exited {proc.returncode}:\n    " + "\n    ".join(tail))
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- time: in this process -----------------------------------------------------------------------

@dataclass
class Timing:
    case: Case
    capture_s: float
    measurements: int
    baseline: list[float]   # seconds per batch, two plain eval forwards
    floor: list[float]      # seconds per batch, train + eval + eval-with-dropout forwards, no hooks
    measure: list[float]    # seconds per batch, measure_model / K

    @staticmethod
    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    @property
    def ratio(self) -> float:
        return self.med(self.measure) / self.med(self.baseline)


def time_case(case: Case, device_name: str, repeat: int) -> tuple[Timing, tuple]:
    import torch

    device = torch.device(device_name)
    target, xs = _setup(case, device_name)
    model = target.model
    started = time.perf_counter()
    capture, analysis = _capture(target)
    capture_s = time.perf_counter() - started
    model.to(device)
    xs = [x.to(device) for x in xs]

    def baseline() -> float:
        model.eval()
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            for x in xs:
                model(x)
                model(x)
        _sync(device)
        return (time.perf_counter() - t0) / len(xs)

    def floor() -> float:
        _sync(device)
        t0 = time.perf_counter()
        _three_passes(model, xs)
        _sync(device)
        return (time.perf_counter() - t0) / len(xs)

    def measure() -> float:
        _sync(device)
        t0 = time.perf_counter()
        _measure(capture, analysis, xs, device)
        _sync(device)
        return (time.perf_counter() - t0) / len(xs)

    # warm-up: plain forwards, the method's passes, and one measure call (checks it measures something)
    baseline()
    floor()
    count = len(_measure(capture, analysis, xs, device))
    if count == 0:
        raise ChildFailed(f"{case.name}: measure returned no measurements")
    timing = Timing(case, capture_s, count, [], [], [])
    for _ in range(repeat):
        timing.baseline.append(baseline())
        timing.floor.append(floor())
        timing.measure.append(measure())
    return timing, (capture, analysis, xs, device)


def profile_case(state: tuple) -> tuple[float, list[tuple], dict[str, float]]:
    """One measure call on one batch under cProfile: total, top entries by own time, and shares."""
    import cProfile
    import pstats

    capture, analysis, xs, device = state
    prof = cProfile.Profile()
    prof.enable()
    _measure(capture, analysis, xs[:1], device)
    _sync(device)
    prof.disable()
    st = pstats.Stats(prof)
    total = st.total_tt
    rows = []
    for func, (cc, nc, tt, ct, _callers) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:PROFILE_TOP]:
        rows.append((_func_label(func), nc, tt, ct))
    shares: dict[str, float] = {}
    for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in st.stats.items():
        path = filename.replace(os.sep, "/")
        if path.endswith("dropcheck/stats.py") and name == "update":
            shares["ChannelStats.update (the hooks' statistics)"] = ct
        elif path.endswith("dropcheck/measure.py") and name == "_instrumented":
            shares["_instrumented (graph copy + GraphModule, once per call)"] = ct
    return total, rows, shares


def _func_label(func: tuple) -> str:
    filename, line, name = func
    if filename == "~":
        return name  # a built-in, e.g. {built-in method torch.conv2d}
    path = filename.replace(os.sep, "/")
    for prefix in (str(REPO).replace(os.sep, "/") + "/", "site-packages/"):
        if prefix in path:
            path = path.split(prefix, 1)[1]
    return f"{path}:{line}({name})"


# --- presentation --------------------------------------------------------------------------------

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
                if not self.console.is_terminal:  # piped: rich's 80 columns would cut the labels
                    self.console = Console(highlight=False, soft_wrap=True, width=120)
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


def fmt_s(x: float) -> str:
    return f"{x:.3f}"


def fmt_mib(x: float) -> str:
    return f"{x / MIB:,.0f}"


# --- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each (default 3)")
    ap.add_argument("--quick", action="store_true", help="smoke run: --repeat 1")
    ap.add_argument("--plain", action="store_true", help="plain text even if rich is installed")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where measure and the forwards run")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile run on a model that misses the target")
    ap.add_argument("--child", choices=("measure", "forward", "floor"), help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args.child, args.case, args.device)
    repeat = 1 if args.quick else max(1, args.repeat)
    out = Out(args.plain)

    load_before = os.getloadavg()
    try:
        # memory first, while this process is still small
        memory = {c.name: {k: run_child(k, c, args.device) for k in ("forward", "floor", "measure")} for c in CASES}
        import torch
        import torchvision

        if args.device == "cuda" and not torch.cuda.is_available():
            out.line("benchmark aborted: --device cuda but no CUDA device is available")
            return 2
        timings, states = [], {}
        for c in CASES:
            t, state = time_case(c, args.device, repeat)
            timings.append(t)
            states[c.name] = state
        profiles = {}
        if not args.no_profile:
            for t in timings:
                if t.ratio > TIME_TARGET:
                    profiles[t.case.name] = profile_case(states[t.case.name])
    except (ChildFailed, subprocess.TimeoutExpired) as exc:
        out.line(f"benchmark aborted: {exc}")
        return 2
    load_after = os.getloadavg()

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    threads_env = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))
    gpu = f", GPU {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    out.line(f"machine: {platform.machine()} {platform.system()}, cpu_count={os.cpu_count()} (usable {usable}), "
             f"torch threads={torch.get_num_threads()}, {threads_env}{gpu}")
    out.line(f"python {platform.python_version()} ({PY}), torch {torch.__version__}, torchvision "
             f"{torchvision.__version__}; device={args.device}; repeat={repeat}; "
             f"loadavg(1m) {load_before[0]:.2f} -> {load_after[0]:.2f}")
    out.line()

    for i, t in enumerate(timings, 1):
        base = t.med(t.baseline)
        rows = [[label, fmt_s(min(xs)), fmt_s(t.med(xs)), f"{t.med(xs) / base:.2f}"] for label, xs in (
            ("2 eval forwards (baseline)", t.baseline),
            ("method floor (3 passes, no hooks)", t.floor),
            ("measure_model / K", t.measure))]
        out.table(f"{i}. {t.case.label}: seconds per batch", ["run", "min s", "med s", "x baseline"], rows)
        out.line(f"   capture + find_sites once, not counted: {t.capture_s:.2f} s; {t.measurements} measurements")
        out.line(f"   measure / two forwards = {t.ratio:.2f}  (target <= {TIME_TARGET})  {verdict(t.ratio <= TIME_TARGET)}; "
                 f"measure / method floor = {t.med(t.measure) / t.med(t.floor):.2f}")
        out.line(f"   ratios of the minima (less noise-prone on a busy machine): measure / two forwards = "
                 f"{min(t.measure) / min(t.baseline):.2f}, floor / two forwards = {min(t.floor) / min(t.baseline):.2f}")
        out.line()

    unit = "CUDA allocated" if args.device == "cuda" else "peak RSS (VmHWM)"
    rows = []
    notes = []
    for c in CASES:
        fwd, flo, mea = (memory[c.name][k] for k in ("forward", "floor", "measure"))
        f_extra, fl_extra, m_extra = (r["peak"] - r["base"] for r in (fwd, flo, mea))
        cap = fmt_mib(mea["capture_peak"]) if "capture_peak" in mea else "-"
        rows.append([c.name, fmt_mib(fwd["base"]), fmt_mib(f_extra), fmt_mib(fl_extra), fmt_mib(m_extra),
                     f"{m_extra / f_extra:.2f}" if f_extra > 0 else "-", cap])
        if mea.get("reset") is False:
            notes.append(f"   {c.name}: could not reset the peak after capture; measure's peak includes capture's")
    out.table(f"{len(timings) + 1}. memory beyond imports + model + data, {unit}, MiB (fresh subprocess each)",
              ["model", "base", "+1 forward", "+floor", "+measure", "x forward", "+capture"], rows)
    out.line("   +floor: measure's three passes over the K batches without hooks; +capture: capture's own peak,")
    out.line("   reset before measure runs. x forward = +measure / +1 forward.")
    for n in notes:
        out.line(n)
    out.line()

    for name, (total, top, shares) in profiles.items():
        out.line(f"where measure's time goes, {name}: cProfile of one measure call on 1 batch, {total:.2f} s "
                 f"(profiler overhead included)")
        for what, s in shares.items():
            out.line(f"   {what}: {s:.2f} s ({s / total:.0%})")
        out.table(f"   top {PROFILE_TOP} by own time", ["function", "calls", "own s", "cum s"],
                  [[f, str(n), f"{tt:.3f}", f"{ct:.3f}"] for f, n, tt, ct in top])

    parts = [f"{t.case.name} {verdict(t.ratio <= TIME_TARGET)} ({t.ratio:.2f}x)" for t in timings]
    mems = []
    for c in CASES:
        fwd, mea = memory[c.name]["forward"], memory[c.name]["measure"]
        f_extra = fwd["peak"] - fwd["base"]
        mems.append(f"{c.name} {(mea['peak'] - mea['base']) / f_extra:.2f}x" if f_extra > 0 else f"{c.name} -")
    out.line(f"summary: time per batch vs two forwards (target <= {TIME_TARGET}): {', '.join(parts)}; "
             f"peak memory vs one forward: {', '.join(mems)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
