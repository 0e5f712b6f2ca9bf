"""`dropcheck train-compare` through the real command: output, Ctrl-C and --resume, the sweep, DDP."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAST = ["examples/preresnet.py", "-a", "position=P3", "--input-shape", "1,3,8,8", "--dataset", "fake",
        "--batch-size", "64", "--lr", "0.05", "--threads", "1"]


def _run(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dropcheck", "train-compare", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _doc(path: Path) -> dict:
    return json.loads(path.read_text())["train_compare"]


def test_json_report_carries_every_field(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = _run(*FAST, "--epochs", "2", "--seeds", "2", "--variants", "original,fixed", "-o", str(out),
                "--format", "json", "--plot", str(tmp_path / "curves.png"))
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["schema"] == 1 and printed["train_compare"] == _doc(out)
    doc = _doc(out)
    assert doc["complete"] and doc["runs_done"] == doc["runs_total"] == 4
    assert doc["settings"]["recipe"]["epochs"] == 2 and doc["settings"]["seeds"] == [0, 1]
    assert doc["settings"]["threads"] == 1 and doc["settings"]["world_size"] == 1
    assert doc["settings"]["dataset"]["name"] == "fake" and doc["settings"]["input_shape"] == [1, 3, 8, 8]
    fixed = next(v for v in doc["variants"] if v["name"] == "fixed")
    assert fixed["guideline"] and len(fixed["changes"]) == 3 and fixed["positions"] == ["P6"] * 3
    diff = doc["summary"]["fixed"]["vs_baseline"]
    assert diff["n"] == 2 and diff["low"] <= diff["mean"] <= diff["high"]
    # two seeds: an interval that excludes 0 is a verdict; one that holds it says too few seeds
    assert diff["verdict"] == ("too few seeds" if diff["low"] <= 0 <= diff["high"] else
                               "better" if diff["low"] > 0 else "worse")
    assert doc["markdown"].startswith("| variant |")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[4/4] fixed seed 1: final" in proc.stderr


def test_text_report_when_piped_is_the_table(tmp_path: Path) -> None:
    proc = _run(*FAST, "--epochs", "1", "--seeds", "1", "--variants", "original,none")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("examples/preresnet.py on fake (512 train / 128 test images at 3x8x8), 1 paired seeds")
    header = next(line for line in lines if line.startswith("variant"))
    assert "vs original (95% CI)" in header
    assert any(line.startswith("none ") and "too few seeds" in line for line in lines)
    assert "pairing: every seed's variants started from the same weights and saw the same batches" in lines


def test_ctrl_c_keeps_finished_runs_and_resume_finishes_them(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    args = [*FAST, "--epochs", "2", "--seeds", "2", "--variants", "original,fixed", "-o", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "dropcheck", "train-compare", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # plain progress: one line per finished run
        seen.append(line)
        if line.startswith("[1/4]"):
            proc.send_signal(signal.SIGINT)
            break
    _, rest = proc.communicate(timeout=600)
    assert proc.returncode == 130, "".join(seen) + rest
    partial = _doc(out)
    done = len(partial["runs"])  # 1, or 2 if the second run ended before the signal landed
    assert f"dropcheck: interrupted; {done} finished run(s) kept in {out}: continue with --resume" in rest
    assert not partial["complete"] and done in (1, 2)
    assert [(r["variant"], r["seed"]) for r in partial["runs"]] == [("original", 0), ("fixed", 0)][:done]

    again = _run(*args)  # without --resume the file is the user's: not overwritten
    assert again.returncode == 2 and "exists" in again.stderr and _doc(out) == partial

    resumed = _run(*args, "--resume", "--format", "json")
    assert resumed.returncode == 0, resumed.stderr
    doc = _doc(out)
    assert doc["complete"] and doc["runs"][0] == partial["runs"][0]
    assert f"[{done + 1}/4]" in resumed.stderr and "[1/4]" not in resumed.stderr

    other = _run(*[a if a != "2" else "3" for a in args[:-2]], "-o", str(out), "--resume")
    assert other.returncode == 2
    assert "--resume: the results file was made with other settings (recipe)" in other.stderr


def test_sweep_inserts_each_position_and_compares_with_no_dropout(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    proc = _run(*FAST, "--epochs", "1", "--seeds", "1", "--sweep", "P3,P6,H5", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = _doc(out)
    assert doc["baseline"] == "none" and [v["name"] for v in doc["variants"]] == ["none", "P3", "P6", "H5"]
    positions = {v["name"]: v["positions"] for v in doc["variants"]}
    assert positions == {"none": [], "P3": ["P3"] * 3, "P6": ["P6"] * 3, "H5": ["H5"]}


@pytest.mark.parametrize("args, message", [
    (["--variants", "original,bogus"], "unknown variant"),
    (["--seeds", "0"], "--seeds '0' must give distinct non-negative seeds"),
    (["--format", "yaml"], "unknown --format 'yaml'"),
    (["--dataset", "mnist"], "unknown --dataset 'mnist'"),
    (["--resume"], "--resume needs the --output file of an earlier run"),
    (["--sweep", "none,P3"], "--sweep takes positions, not none"),
    (["-a", "position=P6", "--epochs", "1"], "nothing to compare: dropcheck fix changes nothing in this model"),
    (["--plot", "curves.svg"], "the plot is a PNG"),
    (["--device", "cuda", "--epochs", "1"], "--device cuda but no CUDA device is available"),
])
def test_bad_options_are_one_line_errors(args: list[str], message: str) -> None:
    if "cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
    proc = _run(*FAST, *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1


def test_two_process_ddp_on_cpu_gives_the_same_report_and_learns(tmp_path: Path) -> None:
    out, single = tmp_path / "ddp.json", tmp_path / "single.json"
    args = [*FAST, "--epochs", "3", "--seeds", "1", "--variants", "original", "--lr", "0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "dropcheck", "train-compare", *args, "-o", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("pairing:") == 1  # rank 0 alone reports
    ref = _run(*args, "-o", str(single))
    assert ref.returncode == 0, ref.stderr
    ddp, one = _doc(out), _doc(single)
    assert ddp["settings"]["world_size"] == 2 and one["settings"]["world_size"] == 1

    def shape(d: object) -> object:
        if isinstance(d, dict):
            return {k: shape(v) for k, v in d.items()}
        if isinstance(d, list):
            return [shape(v) for v in d[:1]]
        return type(d).__name__

    assert shape(ddp["runs"]) == shape(one["runs"]) and set(ddp) == set(one)
    losses = [e["train_loss"] for e in ddp["runs"][0]["epochs"]]
    assert losses[-1] < losses[0]
    # both processes trained on the whole batch between them: the same batch order as one process
    assert ddp["runs"][0]["order_sha"] == one["runs"][0]["order_sha"]
    assert ddp["runs"][0]["init_sha"] == one["runs"][0]["init_sha"]


def test_a_short_real_run_on_digits(tmp_path: Path) -> None:
    out = tmp_path / "digits.json"
    proc = _run("examples/preresnet.py", "-a", "position=P3", "--input-shape", "1,3,8,8", "--epochs", "2",
                "--seeds", "2", "--threads", "1", "--variants", "original,fixed,none", "-o", str(out),
                "--format", "markdown")
    assert proc.returncode == 0, proc.stderr
    doc = _doc(out)
    assert doc["complete"] and doc["settings"]["dataset"]["name"] == "digits"
    assert (doc["settings"]["dataset"]["train_size"], doc["settings"]["dataset"]["test_size"]) == (1437, 360)
    assert doc["settings"]["dataset"]["augment"] == "crop"
    for run in doc["runs"]:
        assert run["final_acc"] > 30.0, run  # 10 digits: chance is 10%; two epochs already learn
        assert len(run["epochs"]) == 2 and run["epochs"][0]["lr"] == 0.1
    assert proc.stdout.startswith("| variant | final acc. (%)") and "| fixed* |" in proc.stdout


def test_digits_on_an_image_model_default_to_16x16(tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    proc = _run("examples/preresnet.py", "-a", "position=P3", "--epochs", "1", "--seeds", "1", "--threads", "1",
                "--variants", "original", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert _doc(out)["settings"]["input_shape"] == [1, 3, 16, 16]
