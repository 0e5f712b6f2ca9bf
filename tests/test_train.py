"""train-compare's stage: paired runs (same weights, same batches), the recorded fields, statistics."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from dropcheck.records.training import Comparison, Listener, RunResult, check_pairing, same_settings
from dropcheck.training.distributed import World
from dropcheck.analysis.load import load_target
from dropcheck.training.pipeline import train_compare_target
from dropcheck.training.loop import (Recipe, input_fingerprint, seeds_from, state_fingerprint, train_run)
from dropcheck.training.data import load_train_data
from dropcheck.records import DropcheckError

EXAMPLE = "examples/preresnet.py"
SMALL = (1, 3, 8, 8)


class Recorder(Listener):
    """Remembers, per run, the weights the model started from and every batch it saw."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def run_started(self, variant: str, seed: int, epochs: int, steps: int) -> None:
        self.events.append(("start", variant, str(seed)))

    def run_done(self, comparison: Comparison, result: RunResult) -> None:
        self.events.append(("done", result.variant, str(result.seed)))


def _compare(variants: list[str], seeds: list[int], epochs: int = 1, listener: Listener | None = None,
             resume: Comparison | None = None, **model_args: object) -> Comparison:
    return train_compare_target(EXAMPLE, {"position": "P3", **model_args}, SMALL, variants=variants, seeds=seeds,
                                dataset="fake", recipe=Recipe(epochs=epochs, batch_size=64, lr=0.05),
                                device="cpu", listener=listener, resume=resume)


@pytest.fixture(scope="module")
def paired() -> Comparison:
    return _compare(["original", "fixed", "none"], [0, 1], epochs=2)


def test_each_seed_s_variants_start_from_the_same_weights_and_see_the_same_batches(paired: Comparison) -> None:
    assert check_pairing(paired) == []
    for seed in (0, 1):
        runs = [paired.run(v, seed) for v in ("original", "fixed", "none")]
        assert len({r.init_sha for r in runs}) == 1 and len({r.order_sha for r in runs}) == 1
    # and the seeds differ from each other, in both
    assert paired.run("original", 0).init_sha != paired.run("original", 1).init_sha
    assert paired.run("original", 0).order_sha != paired.run("original", 1).order_sha


def test_initial_weights_are_the_model_s_own_initialisation_drawn_from_each_seed(paired: Comparison) -> None:
    for seed in (0, 1):
        torch.manual_seed(seed)
        again = load_target(EXAMPLE, {"position": "P3"}, SMALL, weights=True).model.state_dict()
        assert paired.run("original", seed).init_sha == state_fingerprint(again)


def test_pairing_check_names_a_seed_whose_variants_differ(paired: Comparison) -> None:
    broken = Comparison.from_dict(paired.to_dict())
    run = broken.run("fixed", 1)
    broken.runs[broken.runs.index(run)] = RunResult.from_dict({**run.to_dict(), "order_sha": "0" * 16})
    assert check_pairing(broken) == ["seed 1: variants differ in batch order"]


def _order_sha(data: object, model: torch.nn.Module) -> str:
    return train_run(model, "original", model.state_dict(), data, Recipe(epochs=1, batch_size=64), 0,
                     torch.device("cpu")).order_sha


def test_the_batch_order_hash_covers_the_order_and_the_augmentation() -> None:
    from dataclasses import replace

    data = load_train_data("fake", SMALL)
    model = load_target(EXAMPLE, {"position": "P3"}, SMALL, weights=True).model
    first = _order_sha(data, model)
    assert _order_sha(data, model) == first  # the same batches: the same hash
    assert _order_sha(replace(data, augment="crop+flip"), model) != first  # same order, other augmentation
    assert _order_sha(replace(data, augment="none"), model) != first
    shuffled = replace(data, train_y=data.train_y.roll(1), train_x=data.train_x.roll(1, 0))
    assert _order_sha(shuffled, model) != first


def test_input_fingerprint_sees_a_mirror_and_adds_up_over_shares() -> None:
    x = torch.randn(8, 3, 4, 4)
    assert input_fingerprint(x) != input_fingerprint(x.flip(-1))
    assert input_fingerprint(x) == input_fingerprint(x[:3]) + input_fingerprint(x[3:])


def test_a_run_records_every_epoch_and_learns(paired: Comparison) -> None:
    run = paired.run("fixed", 0)
    assert run.status == "done" and len(run.epochs) == 2
    assert set(run.epochs[0]) == {"epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"}
    assert run.final_acc == run.epochs[-1]["test_acc"]
    assert run.best_acc == max(e["test_acc"] for e in run.epochs)
    assert run.images_per_s > 0 and run.seconds > 0
    assert run.epochs[-1]["lr"] < run.epochs[0]["lr"]  # cosine decays
    assert run.final_acc > 20.0  # 10 classes: chance is 10%


def test_runs_go_seed_by_seed_so_an_interrupted_comparison_holds_whole_pairs() -> None:
    rec = Recorder()
    _compare(["original", "fixed"], [0, 1], listener=rec)
    assert [e[1:] for e in rec.events if e[0] == "done"] == [("original", "0"), ("fixed", "0"),
                                                               ("original", "1"), ("fixed", "1")]


def test_resume_trains_only_the_missing_runs_and_gives_the_same_numbers(paired: Comparison) -> None:
    partial = Comparison.from_dict(paired.to_dict())
    partial.runs = partial.runs[:2]  # seed 0: original, fixed done; none and seed 1 missing
    rec = Recorder()
    resumed = _compare(["original", "fixed", "none"], [0, 1], epochs=2, listener=rec, resume=partial)
    assert [e[1:] for e in rec.events if e[0] == "start"] == [("none", "0"), ("original", "1"), ("fixed", "1"),
                                                                ("none", "1")]
    assert resumed.complete
    for run in paired.runs:  # same threads, same seed: the same training, to the last digit
        assert resumed.run(run.variant, run.seed).final_acc == run.final_acc
        assert resumed.run(run.variant, run.seed).epochs[-1]["train_loss"] == run.epochs[-1]["train_loss"]


def test_resume_with_other_settings_is_refused(paired: Comparison) -> None:
    with pytest.raises(DropcheckError, match="other settings \\(recipe\\)"):
        _compare(["original", "fixed", "none"], [0, 1], epochs=3, resume=Comparison.from_dict(paired.to_dict()))


def test_json_round_trip_keeps_every_run(paired: Comparison) -> None:
    back = Comparison.from_dict(paired.to_dict())
    assert back.to_dict() == paired.to_dict()
    doc = paired.to_dict()
    assert set(doc) >= {"target", "settings", "baseline", "variants", "complete", "summary", "runs", "markdown"}
    assert set(doc["settings"]) >= {"dataset", "recipe", "seeds", "device", "threads", "world_size", "input_shape"}
    assert set(doc["summary"]["fixed"]) == {"final", "best", "vs_baseline"}
    assert doc["summary"]["original"]["vs_baseline"] is None and doc["baseline"] == "original"
    assert [v["name"] for v in doc["variants"]] == ["original", "fixed", "none"]


def _fixed_numbers() -> Comparison:
    finals = {"original": [93.6, 93.7, 93.7], "fixed": [93.8, 94.1, 93.9], "none": [92.9, 93.1, 93.0]}
    runs = [RunResult(variant=v, seed=s, status="done", epochs=({"test_acc": a},), final_acc=a, best_acc=a + 0.1,
                      best_epoch=1, seconds=1.0, images_per_s=1.0, init_sha=str(s), order_sha=str(s))
            for v, accs in finals.items() for s, a in enumerate(accs)]
    return Comparison(target="t", settings={"seeds": [0, 1, 2]}, baseline="original",
                      variants=[{"name": v, "guideline": v == "fixed"} for v in finals], runs=runs)


def test_summary_and_paired_interval_match_scipy() -> None:
    c = _fixed_numbers()
    fixed, base = [93.8, 94.1, 93.9], [93.6, 93.7, 93.7]
    s = c.summary("fixed")
    assert math.isclose(s.mean, sum(fixed) / 3) and math.isclose(s.std, stats.tstd(fixed))
    d = c.difference("fixed")
    ci = stats.ttest_rel(fixed, base).confidence_interval(0.95)
    assert math.isclose(d.low, ci.low, rel_tol=1e-9) and math.isclose(d.high, ci.high, rel_tol=1e-9)
    assert d.verdict == "no detectable difference"  # 3 seeds, +0.27 with this spread: the interval holds 0
    assert c.difference("none").verdict == "worse"
    assert c.difference("original") is None


def test_markdown_is_the_paper_s_table_1_form() -> None:
    lines = _fixed_numbers().markdown().splitlines()
    assert lines[0].startswith("| variant | final acc. (%) | best acc. (%) | difference vs original")
    assert lines[2].startswith("| original | 93.67 ± 0.06 |") and lines[2].endswith("| baseline |")
    assert lines[3].startswith("| fixed* | 93.93 ± 0.15 | 94.03 ± 0.15 | (+0.27) [")
    assert lines[4].endswith("| worse |")


def test_same_settings_names_what_differs() -> None:
    a = {"dataset": {"name": "digits"}, "recipe": {"epochs": 3}, "seeds": [0], "device": "cpu"}
    b = {"dataset": {"name": "digits"}, "recipe": {"epochs": 4}, "seeds": [0, 1], "device": "cuda"}
    assert same_settings(a, b) == ["recipe"]


@pytest.mark.parametrize("text, seeds", [("3", [0, 1, 2]), ("0,5,7", [0, 5, 7]), ("1", [0])])
def test_seeds_from(text: str, seeds: list[int]) -> None:
    assert seeds_from(text) == seeds


@pytest.mark.parametrize("text", ["0", "x", "1,1", "-1,2"])
def test_bad_seeds_are_refused(text: str) -> None:
    with pytest.raises(DropcheckError):
        seeds_from(text)


def test_a_model_with_the_wrong_number_of_outputs_is_refused_with_a_hint() -> None:
    with pytest.raises(DropcheckError) as caught:
        _compare(["original"], [0], num_classes=7)
    assert "output is (2, 7), but fake has 10 classes" in caught.value.message
    assert "-a num_classes=10" in caught.value.hint


def test_a_world_of_one_is_not_distributed() -> None:
    assert not World().distributed and World().leader
