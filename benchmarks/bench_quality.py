"""Speed of the explanation-quality metrics (fsl_xai.explain.quality) for many queries.

For 256 queries (64x64 grey, the built-in synthetic lesion set, which has lesion masks) and a
Conv-4 ProtoNet, each metric is timed twice in the same run:

- batched: the library call (all queries, and for deletion/insertion all steps, in big tensors);
- per-query loop: the same computation written plainly, one query at a time (and one step at a
  time for deletion/insertion), as one would without batching.

The table shows both times, their ratio and the largest difference between the two results
(they compute the same numbers). Timing does not depend on the weights, so the Conv-4 is a
seeded, untrained one fit on a 3-way 5-shot support set; the maps are Saliency maps.

Run: ``python benchmarks/bench_quality.py --threads 2`` (``--queries 64`` for a quick look).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # runnable from a checkout without installing

from fsl_xai.data.synthetic import make_synthetic  # noqa: E402
from fsl_xai.explain import explain  # noqa: E402
from fsl_xai.explain.core import make_baseline  # noqa: E402
from fsl_xai.explain.quality import (  # noqa: E402
    deletion_insertion,
    infidelity_sensitivity,
    localization,
    pixel_ranks,
    randomization_check,
    randomized_copy,
)
from fsl_xai.models import make_backbone, make_model  # noqa: E402


def timed(fn):
    """(result, wall seconds, process CPU seconds); on a shared machine CPU time is the steadier."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


# ------------------------------------------------------------------------------ per-query versions
def deletion_loop(fitted, x, maps, targets, steps, baseline, seed):
    """Deletion and insertion areas, one query and one step at a time (same ranking and baseline)."""
    n, _, h, w = x.shape
    base = make_baseline(x, baseline)
    ranks = pixel_ranks(torch.as_tensor(maps), seed)
    fractions = np.linspace(0, 1, steps + 1)
    dels, ins = np.zeros((n, steps + 1)), np.zeros((n, steps + 1))
    with torch.no_grad():
        for i in range(n):
            for k in range(steps + 1):
                count = int(round(k / steps * h * w))
                removed = (ranks[i] < count).view(1, h, w).float()
                pair = torch.stack([x[i] * (1 - removed) + base[i] * removed,
                                    base[i] * (1 - removed) + x[i] * removed])
                p = fitted(pair).softmax(-1)[:, targets[i]]
                dels[i, k], ins[i, k] = float(p[0]), float(p[1])
    return np.trapezoid(dels, fractions, axis=1), np.trapezoid(ins, fractions, axis=1)


def localization_loop(maps, masks):
    hits, energy = np.zeros(len(maps)), np.zeros(len(maps))
    for i in range(len(maps)):
        m, mk = maps[i], masks[i]
        flat = m.max() == m.min()  # a flat map points nowhere: undefined
        hits[i] = np.nan if flat else float(mk[np.unravel_index(np.argmax(m), m.shape)])
        pos = np.clip(m, 0, None)
        energy[i] = pos[mk].sum() / pos.sum() if pos.sum() > 0 and not flat else np.nan
    return hits, energy


def randomization_loop(fitted, x, support, targets, seed):
    from scipy.stats import spearmanr

    rand = randomized_copy(fitted, support, seed=seed)
    rho = np.zeros(len(x))
    for i in range(len(x)):
        a = explain(fitted, x[i:i + 1], "saliency", target=[targets[i]], seed=seed).maps[0]
        b = explain(rand, x[i:i + 1], "saliency", target=[targets[i]], seed=seed).maps[0]
        rho[i] = spearmanr(np.abs(a).ravel(), np.abs(b).ravel()).statistic
    return rho


def infidelity_loop(fitted, x, targets, seed, **kwargs):
    inf, sens = np.zeros(len(x)), np.zeros(len(x))
    for i in range(len(x)):
        r = infidelity_sensitivity(fitted, x[i:i + 1], "saliency", targets=[targets[i]], seed=seed, **kwargs)
        inf[i], sens[i] = r.infidelity[0], r.sensitivity[0]
    return inf, sens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = make_synthetic(n_per_class=(args.queries + 15) // 3 + 5, size=args.size, n_classes=3, seed=args.seed)
    order = np.random.default_rng(args.seed).permutation(len(data))
    support_idx = np.concatenate([order[data.labels[order] == k][:5] for k in range(3)])
    query_idx = np.setdiff1d(order, support_idx)[: args.queries]
    s_img, s_lab = torch.from_numpy(data.images[support_idx]), torch.from_numpy(data.labels[support_idx])
    x, masks = torch.from_numpy(data.images[query_idx]), data.masks[query_idx]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = make_model("protonet", make_backbone("conv4", in_channels=1, image_size=args.size)).eval()
    fitted = model.fit(s_img, s_lab)
    amap, t_explain, _ = timed(lambda: explain(fitted, x, "saliency", seed=args.seed))
    targets = list(amap.targets)
    maps = amap.maps
    print(f"{len(x)} queries {args.size}x{args.size}, Conv-4 ProtoNet, {args.threads} thread(s); "
          f"saliency maps for all queries in {t_explain:.2f} s\n")

    # warm-up on two queries: imports and first-call allocations are not part of either timing
    w = slice(0, 2)
    deletion_insertion(fitted, x[w], maps[w], targets[w], steps=2)
    deletion_loop(fitted, x[w], maps[w], targets[w], 2, "blur", args.seed)
    randomization_check(fitted, x[w], "saliency", s_img, layers="full", targets=targets[w])
    randomization_loop(fitted, x[w], s_img, targets[w], args.seed)
    infidelity_sensitivity(fitted, x[w], "saliency", targets[w], n_perturb_samples=2, n_sensitivity_samples=1)
    localization_loop(maps[w], masks[w])
    localization(maps[w], masks[w])

    rows = []

    def report(row):
        # printed as soon as measured: a slow loop on a busy machine still shows the rows before it
        rows.append(row)
        name, wb, wl, cb, cl, d = row
        print(f"  measured {name}: batched {wb:.2f} s ({cb:.2f} s CPU), per-query loop {wl:.2f} s "
              f"({cl:.2f} s CPU)", flush=True)

    di, wb, cb = timed(lambda: deletion_insertion(fitted, x, maps, targets, steps=args.steps, seed=args.seed))
    (dl, il), wl, cl = timed(lambda: deletion_loop(fitted, x, maps, targets, args.steps, "blur", args.seed))
    diff = max(np.abs(di.deletion_auc - dl).max(), np.abs(di.insertion_auc - il).max())
    report((f"deletion + insertion ({args.steps} steps)", wb, wl, cb, cl, diff))

    loc, wb, cb = timed(lambda: localization(maps, masks))
    (hl, el), wl, cl = timed(lambda: localization_loop(maps, masks))
    diff = max(np.nanmax(np.abs(loc.pointing_hit - hl)), np.nanmax(np.abs(loc.energy_inside - el)))
    report(("localisation (pointing game, energy)", wb, wl, cb, cl, diff))

    rc, wb, cb = timed(lambda: randomization_check(fitted, x, "saliency", s_img, layers="full",
                                                   targets=targets, seed=args.seed))
    rl, wl, cl = timed(lambda: randomization_loop(fitted, x, s_img, targets, args.seed))
    report(("randomisation check (full model)", wb, wl, cb, cl, float(np.abs(rc.final_spearman - rl).max())))

    kw = dict(n_perturb_samples=10, n_sensitivity_samples=5)
    inf, wb, cb = timed(lambda: infidelity_sensitivity(fitted, x, "saliency", targets, seed=args.seed, **kw))
    (il2, sl2), wl, cl = timed(lambda: infidelity_loop(fitted, x, targets, args.seed, **kw))
    # the loop draws its perturbations query by query, so its noise differs from the batched
    # draw: the values agree in distribution (means below), not bit for bit
    report(("infidelity + max-sensitivity", wb, wl, cb, cl, float("nan")))

    head = (f"{'metric':38s} {'batched s':>9s} {'loop s':>8s} {'ratio':>6s}   {'batched cpu':>11s} "
            f"{'loop cpu':>8s} {'ratio':>6s}  {'max |diff|':>10s}")
    print(head)
    for name, wb, wl, cb, cl, d in rows:
        print(f"{name:38s} {wb:9.2f} {wl:8.2f} {wl / wb:5.1f}x   {cb:11.2f} {cl:8.2f} {cl / cb:5.1f}x  {d:10.2g}")
    tot = [sum(r[i] for r in rows) for i in range(1, 5)]
    print(f"{'all four':38s} {tot[0]:9.2f} {tot[1]:8.2f} {tot[1] / tot[0]:5.1f}x   {tot[2]:11.2f} {tot[3]:8.2f} "
          f"{tot[3] / tot[2]:5.1f}x")
    print(f"\nmeans over queries: deletion {np.nanmean(di.deletion_auc):.3f}, insertion "
          f"{np.nanmean(di.insertion_auc):.3f}, pointing {np.nanmean(loc.pointing_hit):.3f}, energy "
          f"{np.nanmean(loc.energy_inside):.3f}, randomisation rho {rc.final_spearman.mean():.3f}, infidelity "
          f"{inf.infidelity.mean():.3g} (loop {il2.mean():.3g}), sensitivity {inf.sensitivity.mean():.3g} "
          f"(loop {sl2.mean():.3g})")


if __name__ == "__main__":
    main()
