"""The patched source, checked in a fresh interpreter before anything is written (design §6).

The project's files that the model imports are copied, package layout kept, into a temporary
folder with the patched files in their place; a fresh Python (source_worker) imports the target
from there, builds it with the same constructor arguments and checks it against what this process
knows of the original: its state_dict loads with strict=True, eval outputs are torch.equal to the
original's (for always-on dropout: the original with it off) on random inputs, train mode still
drops, a re-audit shows no DC001-DC004 on the fixed sites, the dropouts whose p the patch wrote
carry it, and fixing the patched source again changes nothing. Where the patch renames state_dict
keys (a checkpoint is converted alongside), the original's state_dict loads through the key map.
Each check is a Check; a worker that cannot even start is one failed check.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..analysis.load import is_library_frame
from ..records import Capture, Check, Target
from .source_fix import SourceEdits
from .verify import VERIFY_THREADS, capped_threads, eval_mode, eval_reference, loaded, probe_state

SEEDS = (0, 1, 2)
TIMEOUT_S = 600


class Worker:
    """The fresh Python the checks run in, started before the fix's own work so that its imports
    (torch, dropcheck: seconds) overlap it; it waits for one request on stdin."""

    def __init__(self) -> None:
        env = dict(os.environ)
        package_parent = str(Path(__file__).resolve().parents[2])  # dropcheck itself, as this process has it
        env["PYTHONPATH"] = os.pathsep.join([package_parent] + [p for p in [env.get("PYTHONPATH")] if p])
        self._empty = tempfile.mkdtemp(prefix="dropcheck-worker-")  # its start folder: nothing to import there
        self._process = subprocess.Popen([sys.executable, "-m", "dropcheck.fixer.source_worker"], cwd=self._empty,
                                         env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)

    def run(self, payload: Path, tree: Path) -> tuple[str, str] | None:
        """The worker's stdout and stderr for one request; None when it ran past TIMEOUT_S."""
        request = json.dumps({"payload": str(payload), "tree": str(tree)}) + "\n"
        try:
            return self._process.communicate(request, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.close()

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.communicate()
        shutil.rmtree(self._empty, ignore_errors=True)


def verify_source(target: Target, capture: Capture, edits: SourceEdits, root: Path, spec: str,
                  model_args: dict[str, Any], always_on: bool, original_sites: list[str],
                  worker: Worker | None = None) -> list[Check]:
    """Run the checks on the patched copy of the project under `root`; `spec` names the target there.
    The re-audit looks at the fixed sites and at dropouts the patch added (not in `original_sites`)."""
    with tempfile.TemporaryDirectory(prefix="dropcheck-verify-") as tmp:
        tree = Path(tmp) / "project"
        _copy_project(root.resolve(), tree, edits)
        inputs = [random_like(target.inputs, seed) for seed in SEEDS]
        reference = eval_reference(capture, always_on)
        # the worker runs on VERIFY_THREADS too: bit-identity is only promised at one thread count
        probe = probe_state(capture.root)
        with eval_mode(capture.root), torch.no_grad(), capped_threads(VERIFY_THREADS):
            expected = [reference(*x) for x in inputs]
            with loaded(capture.root, probe):
                probe_expected = [reference(*x) for x in inputs]
        payload = Path(tmp) / "payload.pt"
        torch.save({"spec": spec, "model_args": model_args, "input_shape": list(target.input_shape or []),
                    "state_dict": capture.root.state_dict(), "inputs": inputs, "expected": expected,
                    "fixed": edits.fixed, "original_sites": original_sites, "always_on": always_on,
                    "key_map": edits.key_map, "p_written": edits.p_written, "probe_state": probe,
                    "probe_expected": probe_expected}, payload)
        done = (worker or Worker()).run(payload, tree)
        if done is None:
            return [Check("fresh import", False, f"the patched model did not finish its checks in {TIMEOUT_S} s")]
    stdout, stderr = done
    last = stdout.strip().splitlines()[-1:] if stdout.strip() else []
    try:
        checks = [Check(**c) for c in json.loads(last[0])] if last else []
    except (ValueError, TypeError):
        checks = []
    if not checks:
        why = (stderr.strip().splitlines() or ["no output"])[-1]
        return [Check("fresh import", False, f"the patched source did not run in a fresh Python: {why}")]
    return checks


def random_like(inputs: tuple[Any, ...], seed: int) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                 if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs)


def project_files(root: Path) -> set[Path]:
    """The project's source files this process has imported (never torch, dropcheck or installed code)."""
    files = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py") or not os.path.isabs(file) or not os.path.isfile(file):
            continue
        path = Path(file).resolve()
        if path.is_relative_to(root) and not is_library_frame(str(path)) and \
                "site-packages" not in path.parts and "dist-packages" not in path.parts:
            files.add(path)
    return files


def _copy_project(root: Path, tree: Path, edits: SourceEdits) -> None:
    patched = {Path(p.path).resolve(): p.patched for p in edits.patches}
    files = project_files(root) | set(patched)
    for path in sorted(files):
        rel = path.relative_to(root)
        for parent in list(rel.parents)[:-1]:  # keep the package layout: each package's __init__.py too
            init = root / parent / "__init__.py"
            if init.is_file() and not (tree / parent / "__init__.py").exists():
                (tree / parent).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(init, tree / parent / "__init__.py")
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        if path in patched:
            (tree / rel).write_bytes(patched[path].encode("utf-8"))
        else:
            shutil.copyfile(path, tree / rel)
