"""DeLong: the fast mid-rank path against the O(m n) pairwise definition.

Run from the repository root::

    python -m benchmarks.bench_delong [--n 100000] [--k 5] [--sub 1000 2000 4000 8000]

Both implementations run in the same process on the same data (5 score columns,
~30% positives, scores rounded to 4 decimals so that there are ties):

1. exactness: on each subsample size the AUCs, the covariance matrix, z and p of
   both paths are compared (max absolute difference);
2. scaling: timings at several n and the exponent of a log-log fit
   (time ~ n^b: b ~ 1 for n log n, b ~ 2 for the pairwise definition);
3. the full problem (default 100,000 cases x 5 methods) with the fast path, and
   the pairwise definition's time extrapolated to it from its fit.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from ich3d.stats.delong import DeLongResult, delong_roc, delong_roc_by_definition


def _data(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.3).astype(np.int64)
    shift = np.linspace(0.3, 1.5, k)
    logits = rng.normal(size=(n, k)) + y[:, None] * shift
    scores = np.round(1.0 / (1.0 + np.exp(-logits)), 4)  # probabilities with ties
    return y, scores


def _time(fn: Callable[[], DeLongResult], repeat: int) -> tuple[float, DeLongResult]:
    best, res = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t0)
    assert res is not None
    return best, res


def _max_diff(a: DeLongResult, b: DeLongResult) -> tuple[float, float, float]:
    """Max absolute differences of (AUCs, covariance entries, paired z and p)."""
    d_auc = float(np.max(np.abs(a.aucs - b.aucs)))
    d_cov = float(np.max(np.abs(a.cov - b.cov)))
    d_zp = max(max(abs(pa.z - pb.z), abs(pa.p - pb.p)) for pa, pb in zip(a.pairs, b.pairs, strict=True))
    return d_auc, d_cov, float(d_zp)


def _exponent(ns: list[int], ts: list[float]) -> float:
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="cases of the full problem (default 100000)")
    ap.add_argument("--k", type=int, default=5, help="score columns (default 5)")
    ap.add_argument("--sub", type=int, nargs="+", default=[1000, 2000, 4000, 8000], help="subsample sizes")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    y, s = _data(rng, args.n, args.k)
    print(f"DeLong benchmark: {args.k} score columns, {int(y.sum())} positive / {int((1 - y).sum())} negative cases")
    print()
    print("| n | fast (s) | pairwise definition (s) | ratio | max abs diff AUC / cov / z,p |")
    print("| --- | --- | --- | --- | --- |")
    sub_n, t_fast_sub, t_def_sub = [], [], []
    worst = (0.0, 0.0, 0.0)
    for n in args.sub:
        idx = rng.choice(args.n, size=n, replace=False)
        ys, ss = y[idx], s[idx]
        tf, rf = _time(lambda ys=ys, ss=ss: delong_roc(ys, ss), repeat=5)
        td, rd = _time(lambda ys=ys, ss=ss: delong_roc_by_definition(ys, ss), repeat=1)
        diff = _max_diff(rf, rd)
        worst = tuple(max(w, d) for w, d in zip(worst, diff, strict=True))
        sub_n.append(n)
        t_fast_sub.append(tf)
        t_def_sub.append(td)
        print(f"| {n:,} | {tf:.4f} | {td:.3f} | {td / tf:,.0f}x | {diff[0]:.1e} / {diff[1]:.1e} / {diff[2]:.1e} |")

    # fast path alone at larger n, for its exponent
    big_n = sorted({n for n in (12_500, 25_000, 50_000, args.n) if n <= args.n})
    t_fast_big = []
    res_full = None
    for n in big_n:
        ys, ss = y[:n], s[:n]
        t, r = _time(lambda ys=ys, ss=ss: delong_roc(ys, ss), repeat=3)
        t_fast_big.append(t)
        if n == args.n:
            res_full = r
        print(f"| {n:,} | {t:.4f} | | | |")

    b_def = _exponent(sub_n, t_def_sub)
    b_fast = _exponent(big_n, t_fast_big) if len(big_n) > 1 else float("nan")
    t_full = t_fast_big[-1]
    # extrapolate the definition from its largest measured point with its fitted exponent
    t_def_full = t_def_sub[-1] * (args.n / sub_n[-1]) ** b_def
    print()
    print(
        f"max abs difference fast vs definition over all subsamples: AUC {worst[0]:.1e}, "
        f"covariance {worst[1]:.1e}, z and p {worst[2]:.1e}"
    )
    print(f"fitted exponent, time ~ n^b: fast b = {b_fast:.2f} (n {big_n[0]:,}-{big_n[-1]:,}); "
          f"definition b = {b_def:.2f} (n {sub_n[0]:,}-{sub_n[-1]:,})")
    print(f"full problem {args.n:,} x {args.k}: fast {t_full:.3f} s; "
          f"definition extrapolated {t_def_full:,.0f} s (~{t_def_full / t_full:,.0f}x slower)")
    if res_full is not None:
        print("AUCs at full n: " + ", ".join(f"{m.name} {m.auc:.4f}" for m in res_full.models))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
