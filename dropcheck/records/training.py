"""Records of a train-compare: one RunResult per (variant, seed), the Comparison that pairs them.

Made by training.loop, rendered by output, written as JSON (and read back for --resume). The Listener
is what the trainer tells the outside (progress bars, the results file).
Accuracies are percentages. The verdict compares each variant with the baseline on final test
accuracy, paired by seed (statistics.paired_difference); best accuracy is shown beside it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .display import Displayed, shorten
from .statistics import PairedDifference, Summary, paired_difference, summarize


@dataclass(frozen=True)
class RunResult:
    """One training run: a variant trained from the seed's initial weights on the seed's batch order."""

    variant: str
    seed: int
    status: str  # "done", or "diverged" (the loss became NaN/inf; training stopped there)
    epochs: tuple[dict[str, float], ...]  # per epoch: epoch, lr, train_loss, train_acc, test_loss, test_acc, seconds
    final_acc: float
    best_acc: float
    best_epoch: int
    seconds: float
    images_per_s: float  # training images per second, evaluation excluded
    init_sha: str  # of the initial state_dict: equal across the variants of one seed
    order_sha: str  # of every training batch's indices, in order: equal across the variants of one seed

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["epochs"] = [dict(e) for e in self.epochs]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        return cls(**{**d, "epochs": tuple(dict(e) for e in d["epochs"])})


@dataclass(repr=False)
class Comparison(Displayed):
    """Every run of a train-compare, with what is needed to judge and to resume it. `to_json()` equals
    the "train_compare" object of `dropcheck train-compare --format json` (and of its results file)."""

    target: str
    settings: dict[str, Any]  # dataset, recipe, seeds, device, threads, world_size, input_shape, model_args
    variants: list[dict[str, Any]]  # Variant.to_dict() of each, in order
    baseline: str
    runs: list[RunResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # variants left out, and why

    @property
    def variant_names(self) -> list[str]:
        return [v["name"] for v in self.variants]

    @property
    def seeds(self) -> list[int]:
        return list(self.settings["seeds"])

    def run(self, variant: str, seed: int) -> RunResult | None:
        return next((r for r in self.runs if r.variant == variant and r.seed == seed), None)

    @property
    def total_runs(self) -> int:
        return len(self.variant_names) * len(self.seeds)

    @property
    def complete(self) -> bool:
        return all(self.run(v, s) is not None for v in self.variant_names for s in self.seeds)

    def accuracies(self, variant: str, which: str = "final_acc") -> dict[int, float]:
        return {r.seed: getattr(r, which) for r in self.runs if r.variant == variant}

    def summary(self, variant: str, which: str = "final_acc") -> Summary | None:
        values = list(self.accuracies(variant, which).values())
        return summarize(values) if values else None

    def difference(self, variant: str) -> PairedDifference | None:
        """Variant minus baseline on final accuracy, over the seeds both have finished."""
        if variant == self.baseline:
            return None
        mine, base = self.accuracies(variant), self.accuracies(self.baseline)
        seeds = [s for s in self.seeds if s in mine and s in base]
        if not seeds:
            return None
        test_size = self.settings.get("dataset", {}).get("test_size")
        resolution = 100.0 / test_size if test_size else 0.0  # accuracy moves in steps of one test image
        return paired_difference([mine[s] for s in seeds], [base[s] for s in seeds], resolution=resolution)

    def to_dict(self) -> dict[str, Any]:
        rows = {}
        for name in self.variant_names:
            final, best, diff = self.summary(name), self.summary(name, "best_acc"), self.difference(name)
            rows[name] = {"final": final.to_dict() if final else None, "best": best.to_dict() if best else None,
                          "vs_baseline": diff.to_dict() if diff else None}
        return {"target": self.target, "settings": self.settings, "baseline": self.baseline,
                "variants": self.variants, "complete": self.complete,
                "runs_done": len(self.runs), "runs_total": self.total_runs,
                "summary": rows, "runs": [r.to_dict() for r in self.runs], "notes": list(self.notes),
                "markdown": self.markdown()}

    def headline(self) -> str:
        """One line: 'model.py: 2 variants x 3 seeds, 6/6 runs; fixed vs original +1.23 (better)'."""
        line = (f"{shorten(self.target, 60)}: {len(self.variants)} variants x {len(self.seeds)} seeds, "
                f"{len(self.runs)}/{self.total_runs} runs")
        diffs = [(name, self.difference(name)) for name in self.variant_names if name != self.baseline]
        said = [f"{name} vs {self.baseline} {d.mean:+.2f} ({d.verdict})" for name, d in diffs if d is not None]
        return line + ("; " + "; ".join(said[:2]) if said else "") + (f"; +{len(said) - 2} more" if len(said) > 2 else "")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Comparison:
        return cls(target=d["target"], settings=d["settings"], variants=d["variants"], baseline=d["baseline"],
                   runs=[RunResult.from_dict(r) for r in d["runs"]], notes=list(d.get("notes", [])))

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """Per variant: label (* = follows the guidelines), final and best accuracy, difference, verdict."""
        out = []
        for v in self.variants:
            name = v["name"]
            final, best, diff = self.summary(name), self.summary(name, "best_acc"), self.difference(name)
            verdict = diff.verdict if diff else ("baseline" if name == self.baseline else "")
            out.append((name + ("*" if v.get("guideline") else ""), _mean_std(final), _mean_std(best),
                        difference_text(diff), verdict))
        return out

    def markdown(self) -> str:
        """The paper's Table 1 form: accuracy (mean ± std over seeds) and the paired difference."""
        lines = ["| variant | final acc. (%) | best acc. (%) | difference vs " + self.baseline
                 + " (95% CI) | verdict |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        return "\n".join(lines) + "\n"


def _mean_std(s: Summary | None) -> str:
    if s is None:
        return "—"
    return f"{s.mean:.2f}" + (f" ± {s.std:.2f}" if s.std is not None else "")


def difference_text(diff: PairedDifference | None) -> str:
    if diff is None:
        return "—"
    text = f"({diff.mean:+.2f})"
    if diff.low is not None and diff.high is not None:
        text += f" [{diff.low:+.2f}, {diff.high:+.2f}]"
    return text


def same_settings(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Settings keys whose values differ (seeds may grow: a resume can add seeds)."""
    out = []
    for key in sorted(set(saved) | set(wanted)):
        if key in ("seeds", "device", "threads"):
            continue
        if saved.get(key) != wanted.get(key):
            out.append(key)
    return out


def check_pairing(comparison: Comparison) -> list[str]:
    """Seeds whose runs did not share initial weights or batch order (should be none)."""
    problems = []
    for seed in comparison.seeds:
        runs = [r for r in comparison.runs if r.seed == seed]
        for what in ("init_sha", "order_sha"):
            if len({getattr(r, what) for r in runs}) > 1:
                problems.append(f"seed {seed}: variants differ in {'initial weights' if what == 'init_sha' else 'batch order'}")
    return problems


class Listener:
    """What the trainer tells the outside (progress bars, the results file). No-ops by default."""

    def comparison_started(self, comparison: Comparison, epochs: int, steps: int) -> None: ...
    def run_started(self, variant: str, seed: int, epochs: int, steps: int) -> None: ...
    def step_done(self) -> None: ...
    def epoch_done(self, variant: str, seed: int, record: dict[str, float]) -> None: ...
    def run_done(self, comparison: Comparison, result: RunResult) -> None: ...
