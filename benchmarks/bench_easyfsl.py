"""Peer benchmark: fsl-xai against easyfsl 1.5.0 on identical weights and identical episodes.

Measured in ONE run, printed as a table (exit code 1 when a target is missed):

1. Largest relative logit difference on the same episodes (target < 5e-5). easyfsl scores a query
   with minus the plain (unsquared) Euclidean distance to the prototypes, fsl-xai's ProtoNet with
   minus the squared distance; like is compared with like: sqrt(-our logit) against the distance
   d = -(easyfsl logit), as |sqrt(-ours) - d| / d. The two sides embed in other batches and memory
   layouts and sum in other orders (easyfsl's cdist expands |q|^2 - 2 q.p + |p|^2), so float32
   results differ in the last bits, and by CPU: on distances near 20, 4.5e-5 absolute on an AVX2
   CPU and 1.35e-4 on an AVX-512 one (about 2e-6 and 7e-6 relative). The target, 5e-5 relative,
   is some 400 float32 roundings; a wrong formula is off by far more.
   Predictions must agree as well (the square root is monotone).
2. Wall time of a 600-episode 3-way 5-shot 15-query evaluation on the PBC novel classes
   (target: fsl-xai at least 20x faster). easyfsl re-embeds support and query images in every
   episode; fsl-xai's ``evaluate`` embeds each image once (its embedding cache is cleared first)
   and also builds the full per-query table.
3. Meta-training throughput in episodes/second, same backbone, initial weights, data and episodes
   (5-way 5-shot 5-query on the PBC base classes; target at least 1.3x). easyfsl's training step
   is its documented one: ``process_support_set(support)`` then ``model(query)`` (two backbone
   passes), cross-entropy, Adam; fsl-xai's is ``train_episodic`` (one pass over support and query,
   channels_last). The two are run in alternating blocks so that load from other processes hits
   both alike.

easyfsl is never a project dependency: it lives in its own venv (``--peer-venv``, created with
``pip install --no-deps easyfsl==1.5.0 -c constraints.txt`` when missing). Every normal import of
easyfsl pulls torchvision (not installed), so its method modules are loaded under a stub parent
package without running ``easyfsl/__init__.py``; episodes come from fsl-xai's own sampler (easyfsl's
TaskSampler fails on torch 2.13).

Run: ``python benchmarks/bench_easyfsl.py`` (``--threads 2`` by default).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # runnable from a checkout without installing

from _data import load  # noqa: E402

from fsl_xai.episodes import EpisodeSampler  # noqa: E402
from fsl_xai.evaluation import clear_embedding_cache, evaluate  # noqa: E402
from fsl_xai.training import DEFAULT_SPLITS, build_model, train_episodic  # noqa: E402

PEER_VERSION = "1.5.0"


# ---------------------------------------------------------------------------------------- peer
def ensure_peer(venv: Path) -> Path:
    """The easyfsl package folder inside ``venv``, installing it there (only there) if missing."""
    found = sorted(venv.glob("lib/python*/site-packages/easyfsl"))
    if found:
        return found[0]
    print(f"installing easyfsl=={PEER_VERSION} into {venv} (benchmark only, --no-deps) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"), "--no-deps",
                    f"easyfsl=={PEER_VERSION}"], check=True)
    found = sorted(venv.glob("lib/python*/site-packages/easyfsl"))
    if not found:
        raise SystemExit(f"easyfsl did not install into {venv}")
    return found[0]


def load_peer_protonet(package_dir: Path):
    """easyfsl's PrototypicalNetworks class, loaded without easyfsl/__init__.py (which imports
    torchvision through easyfsl.utils) and without easyfsl/methods/__init__.py."""
    for name, folder in (("easyfsl", package_dir), ("easyfsl.methods", package_dir / "methods")):
        stub = types.ModuleType(name)
        stub.__path__ = [str(folder)]
        sys.modules[name] = stub
    module = importlib.import_module("easyfsl.methods.prototypical_networks")
    return module.PrototypicalNetworks


# ---------------------------------------------------------------------------------------- parts
def logit_difference(ours, PeerProtoNet, images, episodes: int, seed: int) -> tuple[float, float, float]:
    """On ``episodes``: the largest relative difference |sqrt(-our logit) - d| / d between our
    distance and easyfsl's d = -(peer logit), the largest absolute one, and the share of equal
    predictions."""
    peer = PeerProtoNet(backbone=classic_copy(ours.backbone)).eval()
    ours.eval()
    sampler = EpisodeSampler(images, 3, 5, 15, seed=seed)
    data = torch.from_numpy(images.images)
    from fsl_xai.evaluation import embed_all

    clear_embedding_cache()
    emb = embed_all(ours, images)  # the evaluation path: every image embedded once
    worst_rel = worst_abs = 0.0
    agree = total = 0
    with torch.no_grad():
        for i in range(episodes):
            _, s, sl, q, _ = sampler.sample_indices(i)
            mine = ours.fit_embeddings(emb[s], torch.from_numpy(sl)).logits_from_embeddings(emb[q])
            peer.process_support_set(data[s], torch.from_numpy(sl))
            theirs = peer(data[q])
            ours_distance, peer_distance = mine.neg().clamp_min(0).sqrt(), theirs.neg()
            gap = (ours_distance - peer_distance).abs()
            worst_abs = max(worst_abs, float(gap.max()))
            # distances under 1 are compared absolutely (no division by a distance near 0)
            worst_rel = max(worst_rel, float((gap / peer_distance.clamp_min(1.0)).max()))
            agree += int((mine.argmax(1) == theirs.argmax(1)).sum())
            total += len(q)
    return worst_rel, worst_abs, agree / total


def classic_copy(backbone: torch.nn.Module) -> torch.nn.Module:
    """A copy of our Conv-4 with the textbook block order conv, BatchNorm, ReLU, max-pool (how a
    peer's Conv-4 is written). fsl-xai's blocks pool before the ReLU: the same function and the
    same weights (ReLU and pool hold none), so the peer's logits are unchanged; the speed of that
    order is part of what the training ratio measures."""
    twin = copy.deepcopy(backbone)
    for block in twin.get_submodule("blocks").children():
        if (isinstance(block, torch.nn.Sequential) and isinstance(block[2], torch.nn.MaxPool2d)
                and isinstance(block[3], torch.nn.ReLU)):
            block[2], block[3] = block[3], block[2]
    return twin


def peer_evaluate(peer, images, episodes: int, seed: int) -> float:
    """easyfsl's evaluation loop (as its ``evaluate_on_one_task``): accuracy over episodes."""
    sampler = EpisodeSampler(images, 3, 5, 15, seed=seed)
    data = torch.from_numpy(images.images)
    correct = total = 0
    peer.eval()
    with torch.no_grad():
        for i in range(episodes):
            _, s, sl, q, ql = sampler.sample_indices(i)
            peer.process_support_set(data[s], torch.from_numpy(sl))
            pred = peer(data[q]).argmax(1)
            correct += int((pred == torch.from_numpy(ql)).sum())
            total += len(q)
    return correct / total


def peer_train(peer, images, start: int, n: int, optimizer, seed: int) -> None:
    """easyfsl's documented episodic training step, on fsl-xai's episodes start..start+n-1."""
    sampler = EpisodeSampler(images, 5, 5, 5, seed=seed)
    data = torch.from_numpy(images.images)
    peer.train()
    for i in range(start, start + n):
        _, s, sl, q, ql = sampler.sample_indices(i)
        optimizer.zero_grad()
        peer.process_support_set(data[s], torch.from_numpy(sl))
        loss = F.cross_entropy(peer(data[q]), torch.from_numpy(ql))
        loss.backward()
        optimizer.step()


# ---------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--episodes", type=int, default=600, help="evaluation episodes (default 600)")
    p.add_argument("--logit-episodes", type=int, default=50, help="episodes compared logit by logit")
    p.add_argument("--train-episodes", type=int, default=60, help="training episodes per side (default 60)")
    p.add_argument("--blocks", type=int, default=3, help="alternating training blocks (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer-venv", type=Path, default=ROOT / "benchmarks" / ".venv-peer")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    PeerProtoNet = load_peer_protonet(ensure_peer(a.peer_venv))
    split = DEFAULT_SPLITS["pbc-blood"]
    train = load("pbc-blood", "train").select_classes(split.base)
    test = load("pbc-blood", "test").select_classes(split.novel)
    print(f"PBC 28px, Conv-4, {a.threads} threads; train {len(train)} images {list(split.base)}; "
          f"test {len(test)} images {list(split.novel)}", file=sys.stderr)

    # --- 3. training throughput, alternating blocks from identical initial weights
    ours = build_model("protonet", "conv4", 3, 28, seed=a.seed)
    peer = PeerProtoNet(backbone=classic_copy(ours.backbone))
    peer_opt = torch.optim.Adam(peer.parameters(), lr=1e-3)
    per = a.train_episodes // a.blocks
    # untimed warm-up of both sides (oneDNN builds its kernels for each new shape on first use)
    warm_ours = build_model("protonet", "conv4", 3, 28, seed=a.seed + 99)
    train_episodic(warm_ours, train, 5, 5, 5, episodes=4, seed=a.seed + 99, progress=False)
    warm_peer = PeerProtoNet(backbone=classic_copy(warm_ours.backbone))
    peer_train(warm_peer, train, 0, 4, torch.optim.Adam(warm_peer.parameters(), lr=1e-3), a.seed + 99)
    t_ours = t_peer = 0.0
    for b in range(a.blocks):
        t0 = time.perf_counter()
        train_episodic(ours, train, 5, 5, 5, episodes=per, seed=a.seed + b, progress=False)
        t_ours += time.perf_counter() - t0
        t0 = time.perf_counter()
        peer_train(peer, train, 0, per, peer_opt, a.seed + b)
        t_peer += time.perf_counter() - t0
    ours_eps, peer_eps = per * a.blocks / t_ours, per * a.blocks / t_peer

    # --- 1. logits on identical weights (the meta-trained ones) and identical episodes
    worst_rel, worst_abs, agree = logit_difference(ours, PeerProtoNet, test, a.logit_episodes, a.seed)

    # --- 2. 600-episode evaluation wall time (ours first embeds everything once, cache cleared)
    peer_eval = PeerProtoNet(backbone=classic_copy(ours.backbone))
    clear_embedding_cache()
    t0 = time.perf_counter()
    result = evaluate(ours, test, n_way=3, n_shot=5, n_query=15, episodes=a.episodes, seed=a.seed, progress=False)
    t_eval_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    peer_acc = peer_evaluate(peer_eval, test, a.episodes, a.seed)
    t_eval_peer = time.perf_counter() - t0

    rows = [
        ("largest relative logit difference |sqrt(-ours) - d| / d, d = -easyfsl logit "
         f"({a.logit_episodes} episodes x 45 queries; largest absolute {worst_abs:.2e})",
         f"{worst_rel:.2e}", "< 5e-5", worst_rel < 5e-5),
        ("same predictions", f"{agree:.4f}", "1.0", agree == 1.0),
        (f"{a.episodes}-episode 3-way 5-shot evaluation: easyfsl / fsl-xai wall time",
         f"{t_eval_peer:.2f} s / {t_eval_ours:.2f} s = {t_eval_peer / t_eval_ours:.1f}x",
         ">= 20x", t_eval_peer / t_eval_ours >= 20),
        ("same accuracy on those episodes (easyfsl / fsl-xai)", f"{peer_acc:.4f} / {result.accuracy:.4f}",
         "equal", abs(peer_acc - result.accuracy) < 1e-9),
        (f"meta-training throughput, 5-way 5-shot 5-query, {per * a.blocks} episodes each: fsl-xai / easyfsl",
         f"{ours_eps:.2f} / {peer_eps:.2f} ep/s = {ours_eps / peer_eps:.2f}x", ">= 1.3x", ours_eps / peer_eps >= 1.3),
    ]
    print(f"\nfsl-xai vs easyfsl {PEER_VERSION} (same run; {a.threads} torch threads; PBC 28px Conv-4)\n")
    print("| measure | value | target | ok |")
    print("|---|---|---|---|")
    for name, value, target, ok in rows:
        print(f"| {name} | {value} | {target} | {'yes' if ok else 'NO'} |")
    missed = [r[0] for r in rows if not r[3]]
    if missed:
        print(f"\nmissed: {missed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
