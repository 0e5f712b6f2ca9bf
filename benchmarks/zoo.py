"""Audit every timm architecture and every torchvision classification model, against the fx floor.

Run:  .venv/bin/python benchmarks/zoo.py --csv /tmp/zoo.csv [--only timm] [--filter 'resnet*'] [--limit 40]
      .venv/bin/python benchmarks/zoo.py --summarize /tmp/zoo.csv     # the summary of an earlier run

For each model, in one worker process, two timed phases (design section 8):

- the FLOOR: build the model on the meta device (on the CPU where meta fails, as dropcheck does)
  and capture it with a bare `torch.fx.symbolic_trace`; where that fails, with an fx.Tracer given
  timm's notrace modules and functions (timm.layers._fx). floor_status: plain, timm-aware or
  untraceable (timeout / killed when the floor itself hit a limit).
- the AUDIT: `dropcheck.analysis.pipeline.audit_target("timm:NAME" / "torchvision:NAME")`. status: ok or
  error (from the report), timeout or killed (a limit), skipped (the floor hit a limit first).

The two phases alternate in order from model to model (floor first on even rows, audit first on
odd ones), so whatever the first build of a model warms is shared out evenly; each worker first
runs both phases on one small model, untimed, so one-time costs (lazy imports, first meta
kernels) fall on no model. Garbage is collected and freed heap handed back (malloc_trim) before
each phase. Targets: audit ok on >= 99.5% of the floor-traceable models, and total audit time
<= 1.3x total floor time over the models where both succeeded. Timings are wall clock: on a
shared machine they carry its noise (the summary prints the load average).

Workers are subprocesses of this script (`--worker`), one model at a time, one torch thread each,
restarted every --recycle models. Requests go in on stdin and results come back as JSON lines
on a duplicate of the worker's stdout, whose fd 1 is pointed at stderr so that a model printing
cannot break the protocol. The parent enforces the limits and replaces a worker that dies:
- time: --timeout seconds per phase; past it the worker is killed and the model marked "timeout";
- memory: a watchdog reads each worker's VmRSS from /proc every 0.2 s and kills it above --mem-gb
  (model marked "killed"). RLIMIT_AS is not usable: it caps *virtual* memory, and importing torch
  (a CUDA build) with torchvision and timm already maps ~3.5 GiB of address space for ~0.7 GiB
  resident; a cap near the real budget fails at import, or as a MemoryError deep in some
  allocation that would read as an audit error rather than as a kill.
A model whose audit (run first) hit a limit gets a floor-only rerun in a fresh worker, so that it
still counts against the floor-traceable total.
peak_rss_mb is the worker's resident high-water mark (VmHWM, reset through /proc/self/clear_refs
before the audit phase) during the audit, imports included; the summary subtracts the worker's
RSS after its imports. Nothing is downloaded (pretrained=False, weights=None).
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import fnmatch
import functools
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
RULES = [f"DC00{i}" for i in range(1, 8)]
COLUMNS = ["source", "model", "floor_status", "floor_seconds", "status", "error_kind", "error_message",
           "dropouts", *RULES, "seconds", "peak_rss_mb",
           # beyond the columns: how it was captured, and where the findings sit
           "active", "floor_device", "floor_error", "method", "device", "nodes", "positions", "sites"]
ACCURACY_TARGET = 99.5  # % of floor-traceable models the audit must handle
TIME_TARGET = 1.3       # total audit / total floor
POLL_S = 0.2


# --- the worker ----------------------------------------------------------------------------------

def _rss_kib(pid: int | str = "self", field: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def _build(source: str, name: str, kwargs: dict[str, Any]) -> tuple[Any, str]:
    """The model as dropcheck builds it: on the meta device, else on the CPU."""
    import warnings

    import torch
    error: BaseException | None = None
    for device in ("meta", "cpu"):
        try:
            with torch.device(device), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if source == "timm":
                    import timm
                    return timm.create_model(name, pretrained=False, **kwargs), device
                import torchvision
                return torchvision.models.get_model(name, weights=None, **kwargs), device
        except Exception as exc:  # noqa: BLE001 - e.g. "Cannot copy out of meta tensor": try the CPU
            error = error or exc
    assert error is not None
    raise error


def _floor(source: str, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Build + bare fx capture; the status says which tracer got through."""
    import torch
    from timm.layers import _fx as timm_fx

    started = time.perf_counter()
    try:
        model, device = _build(source, name, kwargs)
    except Exception as exc:  # noqa: BLE001
        return {"floor_status": "untraceable", "floor_error": "build: " + _first_line(exc)}
    try:
        torch.fx.symbolic_trace(model)
        status, error = "plain", ""
    except Exception as exc:  # noqa: BLE001
        error = "plain: " + _first_line(exc)
        leaves = tuple(timm_fx.get_notrace_modules())

        class TimmAwareTracer(torch.fx.Tracer):
            def is_leaf_module(self, m: Any, qualname: str) -> bool:
                return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

        try:
            tracer = TimmAwareTracer(autowrap_functions=tuple(timm_fx.get_notrace_functions()))
            graph = tracer.trace(model)
            torch.fx.GraphModule(tracer.root, graph)
            status = "timm-aware"
        except Exception as exc2:  # noqa: BLE001
            status, error = "untraceable", f"{error} | timm-aware: {_first_line(exc2)}"
    seconds = time.perf_counter() - started
    return {"floor_status": status, "floor_seconds": round(seconds, 4), "floor_device": device,
            "floor_error": error if status == "untraceable" else ""}


def _audit(source: str, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    from dropcheck.analysis.pipeline import audit_target

    reset = _reset_peak()
    started = time.perf_counter()
    report = audit_target(f"{source}:{name}", kwargs)
    seconds = time.perf_counter() - started
    row: dict[str, Any] = {"status": report.status, "seconds": round(seconds, 4),
                           "peak_rss_mb": round(_rss_kib(field="VmHWM") / 1024) if reset else ""}
    if report.error is not None:
        row["error_kind"] = report.error.kind
        row["error_message"] = (report.error.message.strip().splitlines() or [""])[0][:400]
        return row
    where = {s.id: s.paper_position or s.site.value for s in report.dropouts}
    fired = Counter(f.rule for f in report.findings)
    row.update({r: fired.get(r, 0) for r in RULES})
    row["dropouts"] = len(report.dropouts)
    row["active"] = sum(1 for s in report.dropouts if s.active and s.p > 0)
    row["positions"] = _tally(f"{f.rule}@{where.get(f.dropout, '?')}" for f in report.findings)
    row["sites"] = _tally(s.site.value for s in report.dropouts)
    if report.capture is not None:
        row.update(method=report.capture.method, device=report.capture.device, nodes=report.capture.nodes)
    return row


def _tally(items: Iterator[str] | Any) -> str:
    return ";".join(f"{k}:{n}" for k, n in sorted(Counter(items).items()))


def worker_main() -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a model prints goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    sys.path.insert(0, str(REPO))
    import gc
    import importlib
    import warnings

    import torch

    from dropcheck.analysis.catalog import load_rules
    for name in ("timm", "torchvision", "dropcheck.analysis.capture", "dropcheck.analysis.check", "dropcheck.analysis.pipeline",
                 "dropcheck.analysis.sites"):
        importlib.import_module(name)  # every import happens before the first timed phase
    load_rules()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    try:
        trim: Callable[[], Any] = ctypes.CDLL("libc.so.6").malloc_trim
        trim.argtypes = [ctypes.c_size_t]
        trim = functools.partial(trim, 0)
    except (OSError, AttributeError):  # not glibc
        trim = lambda: None  # noqa: E731

    def send(message: dict[str, Any]) -> None:
        proto.write(json.dumps(message) + "\n")

    for run in (_floor, _audit):  # one-time costs (lazy imports, first meta kernels) are no model's
        run("timm", "resnet10t", {})
    gc.collect()
    send({"type": "ready", "rss_mb": round(_rss_kib() / 1024)})
    runners = {"floor": _floor, "audit": _audit}
    for line in sys.stdin:
        job = json.loads(line)
        for phase in job["phases"]:
            gc.collect()
            trim()  # hand freed heap back, so that the audit's peak is not an earlier model's leftovers
            send({"type": "phase", "phase": phase})
            send({"type": "part", **runners[phase](job["source"], job["model"], job["model_args"])})
        gc.collect()
        send({"type": "done"})
    return 0


# --- the pool ------------------------------------------------------------------------------------

class Worker:
    def __init__(self) -> None:
        self.log = tempfile.TemporaryFile()
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.buffer = b""
        self.ready = False
        self.base_rss_mb = 0
        self.job: dict[str, Any] | None = None
        self.row: dict[str, Any] = {}
        self.phase = ""
        self.deadline = 0.0
        self.done = 0
        self.max_rss_kib = 0

    def send(self, job: dict[str, Any], timeout: float) -> None:
        self.job, self.phase, self.max_rss_kib = job, "", 0
        self.row = {"source": job["source"], "model": job["model"]}
        self.deadline = time.monotonic() + timeout
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()

    def messages(self) -> Iterator[dict[str, Any]]:
        try:
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            return
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            yield json.loads(line)

    def stderr_tail(self) -> str:
        self.log.seek(0)
        lines = [ln for ln in self.log.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1][:300] if lines else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


def run_pool(jobs: list[dict[str, Any]], n_workers: int, timeout: float, mem_kib: int, recycle: int,
             on_row: Callable[[dict[str, Any]], None], on_ready: Callable[[int], None]) -> None:
    pending = list(reversed(jobs))
    floor_only: dict[str, dict[str, Any]] = {}  # rows waiting for a floor-only rerun
    workers: list[Worker] = []
    sel = selectors.DefaultSelector()

    def start() -> None:
        w = Worker()
        w.deadline = time.monotonic() + max(timeout, 120)  # imports
        workers.append(w)
        sel.register(w.proc.stdout, selectors.EVENT_READ, w)

    def retire(w: Worker) -> None:
        sel.unregister(w.proc.stdout)
        w.kill()
        workers.remove(w)

    def finish(w: Worker, row: dict[str, Any]) -> None:
        held = floor_only.pop(w.job["model"], None) if w.job is not None and w.job["phases"] == ["floor"] else None
        if held is not None:  # the audit failed before the floor ran: now the row is complete
            row = {**held, **{k: v for k, v in row.items() if k.startswith("floor_")}}
        elif "floor_status" not in row:
            floor_only[row["model"]] = row
            pending.append({**w.job, "phases": ["floor"]})
            return
        on_row(row)

    def fail(w: Worker, status: str, kind: str, message: str) -> None:
        if w.job is not None:
            row = dict(w.row)
            if w.phase == "floor":  # not floor-traceable
                row.update(floor_status=status, floor_error=message)
            elif w.phase == "audit":
                row.update(status=status, error_kind=kind, error_message=message,
                           peak_rss_mb=round(w.max_rss_kib / 1024))
            if "status" not in row:  # the audit never ran: the floor hit a limit, or the worker died between
                row.update(status="skipped" if w.phase == "floor" else status, error_kind=kind, error_message=message)
            finish(w, row)
        elif not w.ready:  # a worker that cannot even start: stop rather than loop
            raise SystemExit(f"worker failed to start: {message}")
        retire(w)

    def feed(w: Worker) -> None:
        if w.done >= recycle:
            retire(w)
        elif pending:
            w.send(pending.pop(), timeout)

    for _ in range(min(n_workers, len(pending))):
        start()
    while workers:
        for key, _ in sel.select(POLL_S):
            w: Worker = key.data
            for msg in w.messages():
                if msg["type"] == "ready":
                    w.ready, w.base_rss_mb = True, msg["rss_mb"]
                    on_ready(w.base_rss_mb)
                    feed(w)
                elif msg["type"] == "phase":
                    w.phase, w.deadline = msg["phase"], time.monotonic() + timeout
                elif msg["type"] == "part":  # that phase finished: a limit hit now cannot undo it
                    w.row.update({k: v for k, v in msg.items() if k != "type"})
                    w.phase, w.deadline = "", time.monotonic() + timeout
                elif msg["type"] == "done":
                    finish(w, w.row)
                    w.job, w.done = None, w.done + 1
                    feed(w)
        now = time.monotonic()
        for w in list(workers):
            rss = _rss_kib(w.proc.pid)
            w.max_rss_kib = max(w.max_rss_kib, rss)
            if w.proc.poll() is not None:
                code = w.proc.returncode
                how = f"signal {_signal_name(-code)}" if code < 0 else f"exit status {code}"
                fail(w, "killed", "crash", f"worker died ({how}) {_phase(w)}: {w.stderr_tail()}")
            elif rss > mem_kib:
                fail(w, "killed", "memory", f"RSS {rss / 2**20:.1f} GiB > --mem-gb {_phase(w)}")
            elif now > w.deadline and (w.job is not None or not w.ready):
                fail(w, "timeout", "timeout", f"over {timeout:.0f} s {_phase(w)}")
            elif w.job is None and w.ready and not pending:
                retire(w)
        while pending and len(workers) < n_workers:
            start()


def _phase(w: Worker) -> str:
    return f"in the {w.phase} phase" if w.phase else ("between phases" if w.ready else "while starting")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


# --- jobs, CSV and summary -----------------------------------------------------------------------

def list_jobs(args: argparse.Namespace, model_args: dict[str, Any]) -> list[dict[str, Any]]:
    """Model names from a short-lived subprocess, so that this process stays small."""
    code = ("import json, timm, torchvision\n"
            "print(json.dumps({'timm': sorted(timm.list_models()),\n"
            "  'torchvision': sorted(torchvision.models.list_models(module=torchvision.models))}))\n")
    names = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                      text=True).stdout)
    jobs = []
    for source in ("timm", "torchvision"):
        if args.only and source != args.only:
            continue
        for name in names[source]:
            if args.filter and not any(fnmatch.fnmatchcase(name, g) for g in args.filter):
                continue
            jobs.append({"source": source, "model": name, "model_args": model_args})
    jobs = jobs[:args.limit] if args.limit else jobs
    for i, job in enumerate(jobs):
        job["phases"] = ["floor", "audit"] if i % 2 == 0 else ["audit", "floor"]
    return jobs


def parse_model_args(pairs: list[str]) -> dict[str, Any]:
    import ast
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: (r["source"], r["model"])):
            writer.writerow(row)
    os.replace(tmp, path)


def read_csv(path: str) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cause(row: dict[str, Any]) -> str:
    """A failure's message with the model's own name and numbers taken out, to group by."""
    text = str(row.get("error_message") or "")
    text = text.replace(f"{row['source']}:{row['model']}", "MODEL").replace(str(row["model"]), "MODEL")
    text = re.sub(r"\b\d+(\.\d+)?\b", "N", text)
    return f"{row.get('error_kind') or row['status']}: {text}"


def summarize(rows: list[dict[str, Any]], base_rss_mb: list[int], say: Callable[[str], None]) -> None:
    def num(row: dict[str, Any], key: str) -> float:
        try:
            return float(row.get(key) or 0)
        except ValueError:
            return 0.0

    by_source = Counter(r["source"] for r in rows)
    floors = Counter(r.get("floor_status") or "not run" for r in rows)
    traceable = [r for r in rows if r.get("floor_status") in ("plain", "timm-aware")]
    ok = [r for r in traceable if r.get("status") == "ok"]
    beyond = [r for r in rows if r.get("floor_status") not in ("plain", "timm-aware") and r.get("status") == "ok"]
    pct = 100.0 * len(ok) / len(traceable) if traceable else 0.0
    audit_s, floor_s = sum(num(r, "seconds") for r in ok), sum(num(r, "floor_seconds") for r in ok)
    ratio = audit_s / floor_s if floor_s else float("nan")
    ratios = sorted(num(r, "seconds") / num(r, "floor_seconds") for r in ok if num(r, "floor_seconds") > 0)
    say(f"models tried: {len(rows)} ({', '.join(f'{s} {n}' for s, n in sorted(by_source.items()))})")
    others = ", ".join(f"{k} {n}" for k, n in sorted(floors.items()) if k not in ("plain", "timm-aware"))
    say(f"floor-traceable: {len(traceable)} (plain {floors['plain']}, timm-aware {floors['timm-aware']}); "
        f"not: {others or 'none'}")
    say(f"audit ok among floor-traceable: {len(ok)}/{len(traceable)} = {pct:.2f}%  "
        f"(target >= {ACCURACY_TARGET}%)  {'PASS' if pct >= ACCURACY_TARGET else 'FAIL'}")
    say(f"audit ok where the floor cannot trace: {len(beyond)}/{len(rows) - len(traceable)}")
    say(f"time over those {len(ok)} models: audit {audit_s:.1f} s, floor {floor_s:.1f} s, ratio {ratio:.2f}  "
        f"(target <= {TIME_TARGET})  {'PASS' if ratio <= TIME_TARGET else 'FAIL'}"
        + (f"; per-model ratio median {ratios[len(ratios) // 2]:.2f}, p90 {ratios[int(len(ratios) * .9)]:.2f}"
           if ratios else ""))
    base = min(base_rss_mb) if base_rss_mb else 0
    for device in ("meta", "cpu"):
        peaks = [(num(r, "peak_rss_mb"), r) for r in rows if r.get("status") == "ok" and r.get("device") == device]
        if peaks:
            top, row = max(peaks, key=lambda p: p[0])
            say(f"peak RSS during an audit captured on {device} ({len(peaks)} models): {top:.0f} MiB "
                f"({row['source']}:{row['model']})"
                + (f"; worker after imports {base} MiB, so {top - base:.0f} MiB beyond the imports" if base else ""))
    slow = sorted(ok, key=lambda r: -num(r, "seconds"))[:5]
    say("slowest audits: " + ", ".join(f"{r['model']} {num(r, 'seconds'):.1f}s (floor {num(r, 'floor_seconds'):.1f}s)"
                                       for r in slow))
    fired = {rule: sum(1 for r in rows if num(r, rule) > 0) for rule in RULES}
    with_dropout = sum(1 for r in rows if num(r, "dropouts") > 0)
    active = sum(1 for r in rows if num(r, "active") > 0)
    say(f"models with dropout sites: {with_dropout}, with p > 0: {active}; models per rule fired: "
        + ", ".join(f"{rule} {n}" for rule, n in fired.items()))
    failures = [r for r in rows if r.get("status") != "ok"]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in failures:
        groups[_cause(r)].append(r)
    say(f"failures: {len(failures)} ({sum(1 for r in failures if r in traceable)} on floor-traceable models)")
    for cause, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        names = ", ".join(f"{r['model']}{'' if r in traceable else '*'}" for r in members[:8])
        more = f" (+{len(members) - 8})" if len(members) > 8 else ""
        say(f"  {len(members):4d}  {cause[:220]}")
        say(f"        {names}{more}")
    if failures:
        say("  (* = the floor cannot trace it either)")


class Progress:
    """A rich progress bar on a TTY, one plain line per model otherwise; both on stderr."""

    def __init__(self, total: int) -> None:
        self.total, self.count, self.bar = total, 0, None
        if sys.stderr.isatty():
            try:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn
                self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), console=Console(stderr=True), transient=True)
                self.task = self.bar.add_task("zoo", total=total)
                self.bar.start()
            except ImportError:
                self.bar = None

    def advance(self, row: dict[str, Any]) -> None:
        self.count += 1
        text = (f"{row['source']}:{row['model']} {row.get('floor_status', '?')} {row.get('floor_seconds', '')}s "
                f"-> {row.get('status')} {row.get('seconds', '')}s {row.get('error_message', '') or ''}")
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=f"{row['model'][:40]:40s}")
            if row.get("status") != "ok":
                self.bar.console.print(text, markup=False, highlight=False)
        else:
            print(f"[{self.count}/{self.total}] {text}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", help="write one row per model here")
    ap.add_argument("--only", choices=["timm", "torchvision"])
    ap.add_argument("--filter", action="append", metavar="GLOB", help="fnmatch on model names (repeatable)")
    ap.add_argument("--limit", type=int, default=0, help="at most N models (after --filter)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per phase (floor, audit) of one model")
    ap.add_argument("--mem-gb", type=float, default=4.0, help="RSS limit per worker (watchdog on /proc)")
    ap.add_argument("--recycle", type=int, default=100, help="restart a worker after this many models")
    ap.add_argument("-a", "--model-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="constructor keyword for every model (floor and audit)")
    ap.add_argument("--summarize", metavar="CSV", help="only print the summary of an earlier run's CSV")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main()
    say: Callable[[str], None] = lambda text: print(text, flush=True)  # noqa: E731
    if args.summarize:
        summarize(read_csv(args.summarize), [], say)
        return 0

    model_args = parse_model_args(args.model_arg)
    jobs = list_jobs(args, model_args)
    rows: list[dict[str, Any]] = []
    base: list[int] = []
    progress = Progress(len(jobs))
    load_before, started = os.getloadavg(), time.monotonic()
    live = open(f"{args.csv}.partial", "w", newline="") if args.csv else None
    writer = csv.DictWriter(live, COLUMNS, extrasaction="ignore") if live else None
    if writer:
        writer.writeheader()

    def on_row(row: dict[str, Any]) -> None:
        rows.append(row)
        progress.advance(row)
        if writer:
            writer.writerow(row)
            live.flush()

    try:
        run_pool(jobs, max(1, args.workers), args.timeout, int(args.mem_gb * 2**20), max(1, args.recycle),
                 on_row, base.append)
    finally:
        progress.stop()
        if live:
            live.close()
    if args.csv:
        write_csv(args.csv, rows)
        os.remove(f"{args.csv}.partial")
    load_after = os.getloadavg()
    say(f"zoo: {len(jobs)} models, {args.workers} workers, timeout {args.timeout:.0f} s/phase, "
        f"mem {args.mem_gb:g} GiB, model args {model_args or 'none'}; wall {time.monotonic() - started:.0f} s; "
        f"loadavg(1m) {load_before[0]:.2f} -> {load_after[0]:.2f} on {os.cpu_count()} CPUs")
    summarize(rows, base, say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
