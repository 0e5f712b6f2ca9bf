"""Which capture for models plain fx cannot trace? dropcheck's specialising trace against torch.export.

Run:  .venv/bin/python benchmarks/capture_mechanisms.py [--repeat N]

Issue 14 asked to choose the mechanism by measuring it. For each user-style model in
benchmarks/models/shape_flow.py (forwards that branch on x.dim(), size a hidden state from
x.size(0), loop over x.size(2), test x.is_cuda), in this one process after an untimed warm-up of
each mechanism on the first model:

- dropcheck: `capture_graph` (plain fx fails, then the specialising tracer: both attempts timed),
  with the number of nodes of the analysed graph (leaf modules as call_module);
- torch.export: `torch.export.export(model.train(), (x,))`, with its number of ATen nodes.

Medians of --repeat runs; ratio export / dropcheck. The graph dropcheck needs (module leaves,
owners, per-call source lines, train and eval graphs) is what the first gives directly; export's
nodes carry nn_module_stack metadata instead, and it would have to run twice as well (train and
eval), so the export times here are a lower bound of what it would cost us.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODELS = [("AudioCNN", (2, 1, 64)), ("CRNN", (2, 8, 10)), ("PointNet", (2, 3, 100))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from dropcheck.analysis.capture import capture_graph
    from dropcheck.analysis.load import load_target

    torch.set_num_threads(1)
    spec = str(HERE / "models" / "shape_flow.py")
    rows = []
    for k, (name, shape) in enumerate(MODELS):
        ours, theirs, nodes = [], [], (0, 0)
        for r in range(args.repeat + (1 if k == 0 else 0)):  # the first model's first round warms both
            target = load_target(f"{spec}:{name}", input_shape=shape, weights=True)
            started = time.perf_counter()
            capture = capture_graph(target)
            middle = time.perf_counter()
            exported = torch.export.export(target.model.train(), (torch.randn(*shape),))
            ended = time.perf_counter()
            if k == 0 and r == 0:
                continue
            ours.append(middle - started)
            theirs.append(ended - middle)
            nodes = (len(capture.nodes), len(exported.graph.nodes))
        a, b = statistics.median(ours), statistics.median(theirs)
        rows.append((name, capture.method, a, nodes[0], b, nodes[1], b / a))
    print(f"{'model':<10} {'dropcheck':>20} {'nodes':>6} {'torch.export':>13} {'nodes':>6} {'export/ours':>12}")
    for name, method, a, n, b, m, ratio in rows:
        print(f"{name:<10} {method + f' {a * 1000:.0f} ms':>20} {n:>6} {b * 1000:>10.0f} ms {m:>6} {ratio:>11.1f}x")
    print(f"median export/ours: {statistics.median(r[-1] for r in rows):.1f}x (median of {args.repeat} runs each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
