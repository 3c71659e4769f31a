"""Peak memory of the ``svm`` baseline's fit: liblinear (``LinearSVC``) vs the float32 L-BFGS solver.

Run from the repository root::

    python -m benchmarks.bench_svm [--volumes 1500] [--slices 60] [--features 512] [--C 0.01]

Default: 1/10 of the RSNA training set (about 15,000 volumes there), 60 slices of
512 float32 features each (what the stage-1 CNN gives), 24-60 real slices per
volume, zero-padded to 60 as the baseline does, plus 1/10 as many validation
volumes; one C. Each solver runs in a fresh process; the figure is the growth
of the process's peak resident memory during ``fit_linear_svm`` (the features
themselves are allocated before). Also prints the fit time and the agreement of
the two solvers' validation decision values.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _child(args: argparse.Namespace) -> None:
    import resource

    import numpy as np
    import scipy.optimize  # noqa: F401  both solvers' libraries loaded before the baseline RSS
    import sklearn.metrics  # noqa: F401
    import sklearn.svm  # noqa: F401

    from ich3d.evaluation.inference.baselines import fit_linear_svm

    rng = np.random.default_rng(0)
    direction = rng.normal(size=args.features).astype(np.float32)

    def volumes(n: int) -> tuple[list[np.ndarray], np.ndarray]:
        y = (np.arange(n) % 2).astype(np.int64)
        out = []
        for i in range(n):
            t = int(rng.integers(args.slices * 2 // 5, args.slices + 1))
            v = rng.normal(size=(t, args.features)).astype(np.float32)
            if y[i]:
                v[t // 3 : t // 3 + 3] += 0.05 * direction
            out.append(v)
        return out, y

    tr, ytr = volumes(args.volumes)
    va, yva = volumes(max(20, args.volumes // 10))

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    base = rss_mib()
    t0 = time.perf_counter()
    svm = fit_linear_svm(tr, ytr, va, yva, Cs=(args.C,), length=args.slices, solver=args.solver)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    scores, _ = svm.decision_function(va)
    np.save(args.scores, scores)
    print(json.dumps({"mib": peak - base, "seconds": seconds, "val_auc": svm.val_auc[args.C]}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=1500)
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--C", type=float, default=0.01)
    parser.add_argument("--solver", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scores", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.solver is not None:
        _child(args)
        return
    import tempfile
    from pathlib import Path

    import numpy as np

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for solver in ("liblinear", "lbfgs"):
            scores = str(Path(tmp) / f"{solver}.npy")
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_svm", f"--volumes={args.volumes}",
                 f"--slices={args.slices}", f"--features={args.features}", f"--C={args.C}",
                 f"--solver={solver}", f"--scores={scores}"],
                check=True, capture_output=True, text=True,
            )
            rows[solver] = {**json.loads(out.stdout.strip().splitlines()[-1]), "scores": np.load(scores)}
    n_values = args.volumes * args.slices * args.features
    print(f"svm fit: {args.volumes} training volumes x {args.slices} slices x {args.features} features "
          f"({n_values / 1e6:.0f} M values), C={args.C}")
    print(f"{'solver':<12}{'peak MiB':>10}{'fit s':>8}{'val AUC':>9}")
    for solver, r in rows.items():
        print(f"{solver:<12}{r['mib']:>10.0f}{r['seconds']:>8.1f}{r['val_auc']:>9.4f}")
    corr = float(np.corrcoef(rows["liblinear"]["scores"], rows["lbfgs"]["scores"])[0, 1])
    print(f"peak memory lbfgs / liblinear: {rows['lbfgs']['mib'] / rows['liblinear']['mib']:.2f}x (target <= 0.5x); "
          f"validation decision values correlate {corr:.5f}")


if __name__ == "__main__":
    main()
