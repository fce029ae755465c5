"""Training: episodic meta-training, classification pre-training, checkpoints and default models.

``train_episodic`` meta-trains any registered few-shot model on episodes drawn from base classes,
with one backbone pass over support and query together (``model.episode_logits``), keeps the state
that scores best on validation episodes, and can write and resume checkpoints. ``pretrain`` trains a
backbone with a linear classification head (for SimpleShot and the fine-tuning baseline).
``default_model`` gives a ready model per shared dataset, trained once and cached.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import CheckpointInfo, load_checkpoint, save_checkpoint, training_state
from .config import cache_dir as _cache_dir
from .data.imageset import ImageSet
from .episodes import ClassSplit, EpisodeSampler
from .errors import CheckpointError, EpisodeError, ModelError
from .models import make_backbone, make_model
from .models.base import FewShotClassifier

__all__ = [
    "CheckpointInfo", "DEFAULT_SPLITS", "DefaultRecipe", "TrainResult", "default_class_split",
    "default_model", "default_recipe", "load_checkpoint", "pretrain", "save_checkpoint", "train_episodic",
]


# ---------------------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    """What a training run did.

    Attributes:
        episodes: episodes (or, for ``pretrain``, epochs) trained in total, including resumed ones.
        best_val_accuracy / best_val_ci95 / best_episode: the selected state's validation score
            (None without validation: then the last state is kept).
        history: one dict per validation (episode, val_accuracy, ci95, train_loss, train_accuracy).
        seconds: wall time of this call; episodes_per_second: training throughput of this call.
    """

    episodes: int
    best_val_accuracy: float | None = None
    best_val_ci95: tuple[float, float] | None = None
    best_episode: int | None = None
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    episodes_per_second: float = 0.0

    def val_metrics(self) -> dict:
        return {"best_val_accuracy": self.best_val_accuracy,
                "best_val_ci95": list(self.best_val_ci95) if self.best_val_ci95 else None,
                "best_episode": self.best_episode, "history": self.history}


# ---------------------------------------------------------------------------------------- helpers
def _progress_bar(total: int, desc: str, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, leave=False,
                unit="ep", dynamic_ncols=True)


def _ci95(values: np.ndarray) -> tuple[float, float]:
    """Normal-approximation 95% interval of the mean of per-episode accuracies."""
    m = float(np.mean(values))
    if len(values) < 2:
        return m, m
    half = 1.96 * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return m - half, m + half


def _prepare_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def embed_images(model: FewShotClassifier, images: np.ndarray | torch.Tensor, batch_size: int = 512,
                 channels_last: bool = True) -> torch.Tensor:
    """Embed every image once, in eval mode and without gradients: (N, C, H, W) -> (N, D)."""
    was_training = model.training
    model.eval()
    x = torch.as_tensor(images)
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out.append(model.embed(_prepare_input(x[i:i + batch_size], channels_last)).float())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def episode_accuracies(model: FewShotClassifier, images: ImageSet, n_way: int, n_shot: int, n_query: int,
                       episodes: int, seed: int, classes: Sequence[str] | None = None,
                       embeddings: torch.Tensor | None = None) -> np.ndarray:
    """Per-episode accuracy from embeddings computed once (fast validation during training)."""
    sampler = EpisodeSampler(images, n_way, n_shot, n_query, classes=classes, seed=seed)
    emb = embeddings if embeddings is not None else embed_images(model, images.images)
    accs = np.empty(episodes)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i in range(episodes):
            _, s, sl, q, ql = sampler.sample_indices(i)
            model.fit_support_embeddings(emb[s], torch.from_numpy(sl))
            logits = model.logits_from_embeddings(emb[q])
            accs[i] = float((logits.argmax(1).numpy() == ql).mean())
    model.train(was_training)
    return accs


def _val_shape(images: ImageSet, n_way: int, n_shot: int, classes: Sequence[str] | None) -> tuple[int, int, int]:
    names = list(classes) if classes is not None else list(images.class_names)
    counts = images.class_counts()
    smallest = min(counts[c] for c in names)
    n_query = min(15, smallest - n_shot)
    if n_query < 1:
        raise EpisodeError(f"validation set {images.name!r} has a class with only {smallest} images; "
                           f"it needs more than n_shot = {n_shot} per class")
    return min(n_way, len(names)), n_shot, n_query


def validation_accuracy(model: FewShotClassifier, val_images: ImageSet, n_way: int, n_shot: int,
                        episodes: int = 100, seed: int = 0, classes: Sequence[str] | None = None) -> dict:
    """Mean accuracy and 95% CI on ``episodes`` fixed validation episodes (as recorded in checkpoints)."""
    vw, vs, vq = _val_shape(val_images, n_way, n_shot, classes)
    acc = episode_accuracies(model, val_images, vw, vs, vq, episodes, seed + 1_000_003, classes)
    return {"best_val_accuracy": float(acc.mean()), "best_val_ci95": list(_ci95(acc)),
            "val_episodes": episodes, "val_set": val_images.name, "val_shape": [vw, vs, vq]}


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _adam(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam with the fused CPU kernel (one kernel for all parameters instead of a Python loop
    over them; measurably faster for the many small tensors of Conv-4, see benchmarks/README.md)."""
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def set_threads(n: int | None) -> None:
    """Set torch's intra-op threads (None: leave as is)."""
    if n is not None:
        torch.set_num_threads(max(1, int(n)))


# ---------------------------------------------------------------------------------------- episodic
def train_episodic(
    model: FewShotClassifier,
    train_images: ImageSet,
    n_way: int = 5,
    n_shot: int = 5,
    n_query: int = 10,
    episodes: int = 1000,
    seed: int = 0,
    val_images: ImageSet | None = None,
    val_every: int = 100,
    lr: float = 1e-3,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    *,
    classes: Sequence[str] | None = None,
    val_classes: Sequence[str] | None = None,
    val_episodes: int = 100,
    weight_decay: float = 0.0,
    checkpoint_every: int | None = None,
    class_split: ClassSplit | None = None,
    extra_info: dict | None = None,
    channels_last: bool = True,
    autocast: bool = False,
    compile: bool = False,
    stop_after: int | None = None,
) -> TrainResult:
    """Meta-train ``model`` on episodes from ``train_images``; the model is updated in place.

    Each step draws episode ``i`` of ``EpisodeSampler(train_images, n_way, n_shot, n_query,
    classes, seed)``, runs the backbone once over support and query together, and takes an Adam
    step on the cross-entropy of the query logits. Every ``val_every`` episodes the model is scored
    on ``val_episodes`` fixed episodes of ``val_images`` (embedded once); the best state is kept and
    restored at the end.

    Args:
        model: any registered few-shot model (its backbone is trained).
        train_images: the meta-training images; ``classes`` restricts them to base classes.
        n_way / n_shot / n_query: episode shape (n_query queries per class).
        episodes: total episodes to train (a resumed run continues up to this number).
        seed: same seed (and same start weights) -> same trained weights.
        val_images: validation images (novel classes or held-out images); None: keep the last state.
        val_every: episodes between validations.
        lr: Adam learning rate.
        progress: show a tqdm progress bar.
        checkpoint: file to save to (every ``checkpoint_every`` episodes, default ``val_every``, and
            at the end); it then holds the selected weights plus the state needed to resume.
        resume: continue from ``checkpoint`` when it exists (same data, model and settings).
        classes / val_classes: the classes to draw training / validation episodes from.
        val_episodes: validation episodes per validation.
        class_split / extra_info: recorded in the checkpoint.
        channels_last / autocast / compile: speed options (see benchmarks/README.md); autocast uses
            bfloat16 on CPU.
        stop_after: stop (as if interrupted) after this many episodes of this call; for tests.

    Returns:
        TrainResult with the validation history and throughput.

    Raises:
        EpisodeError: the data cannot give such episodes. CheckpointError: resume from a checkpoint
        of other data, model or settings.
    """
    if episodes < 1:
        raise EpisodeError(f"episodes must be at least 1, got {episodes}")
    if val_every < 1:
        raise EpisodeError(f"val_every must be at least 1, got {val_every}")
    cin = getattr(model.backbone, "in_channels", train_images.n_channels)
    if train_images.n_channels != cin:
        raise ModelError(f"{train_images.name} has {train_images.n_channels} channel(s) but the backbone expects "
                         f"{cin}; convert the images with ImageSet.convert(channels={cin})")
    sampler = EpisodeSampler(train_images, n_way, n_shot, n_query, classes=classes, seed=seed)
    train_classes = tuple(classes) if classes is not None else train_images.class_names
    data = torch.from_numpy(train_images.images)
    val_shape = _val_shape(val_images, n_way, n_shot, val_classes) if val_images is not None else None
    val_seed = seed + 1_000_003  # fixed validation episodes, never the training ones

    torch.manual_seed(seed)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = _adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    settings = {"n_way": n_way, "n_shot": n_shot, "n_query": n_query, "episodes": episodes, "seed": seed,
                "lr": lr, "weight_decay": weight_decay, "val_every": val_every, "val_episodes": val_episodes}

    start, best_acc, best_ci, best_ep, best_state, history = 0, None, None, None, None, []
    losses: list[float] = []  # training loss / accuracy since the last validation
    accs: list[float] = []
    if resume and checkpoint is not None and Path(checkpoint).exists():
        info, state, _ = training_state(checkpoint)
        if state is None:
            raise CheckpointError(f"{checkpoint} holds no training state (it was saved after training ended "
                                  "without it); train again without resume=True")
        if info.data_fingerprint != train_images.fingerprint():
            raise CheckpointError(f"{checkpoint} was trained on other data ({info.dataset}, fingerprint "
                                  f"{info.data_fingerprint}); resume with the same images or start a new run")
        old = state.get("settings", {})
        changed = {k: (old.get(k), v) for k, v in settings.items() if k != "episodes" and old.get(k) != v}
        if changed:
            raise CheckpointError(f"cannot resume {checkpoint}: settings differ "
                                  f"({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
                                  "resume with the same settings or start a new run")
        load_checkpoint(checkpoint, model)  # checks backbone / channels, loads the selected weights
        model.load_state_dict(state["current_state"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["episode"])
        best_acc, best_ep, history = state.get("best_val_accuracy"), state.get("best_episode"), state.get("history", [])
        best_ci = tuple(state["best_val_ci95"]) if state.get("best_val_ci95") else None
        best_state = state.get("best_state")
        running = state.get("running") or {}
        losses, accs = list(running.get("losses", [])), list(running.get("accuracies", []))
        if channels_last:
            model.to(memory_format=torch.channels_last)

    step_fn = model.episode_logits
    if compile:
        step_fn = torch.compile(model.episode_logits, dynamic=False)
    every = checkpoint_every or val_every

    def save(ep: int, finished: bool) -> None:
        if checkpoint is None:
            return
        current = _state_copy(model)
        if best_state is not None and finished:
            model.load_state_dict(best_state)
        info = CheckpointInfo.for_model(
            model, dataset=train_images.name, data_fingerprint=train_images.fingerprint(),
            classes=train_classes, class_split=class_split.to_dict() if class_split else None,
            val_metrics={"best_val_accuracy": best_acc, "best_val_ci95": list(best_ci) if best_ci else None,
                         "best_episode": best_ep, "val_episodes": val_episodes if val_images is not None else 0,
                         "val_set": val_images.name if val_images is not None else None,
                         "val_shape": list(val_shape) if val_shape else None},
            progress={"episode": ep, "episodes": episodes, "finished": finished, **settings},
            extra=extra_info or {})
        state = {"episode": ep, "settings": settings, "current_state": current,
                 "optimizer": optimizer.state_dict(), "best_state": best_state, "best_val_accuracy": best_acc,
                 "best_val_ci95": list(best_ci) if best_ci else None, "best_episode": best_ep, "history": history,
                 "running": {"losses": list(losses), "accuracies": list(accs)}}
        if best_state is not None and not finished:
            model.load_state_dict(best_state)  # the file's main weights are always the selected ones
        save_checkpoint(checkpoint, model, info, training_state=state)
        model.load_state_dict(current)

    t0 = time.perf_counter()
    model.train()
    bar = _progress_bar(episodes, f"meta-training {model.name}", progress, initial=start)
    done_here = 0
    try:
        for ep in range(start, episodes):
            if stop_after is not None and done_here >= stop_after:
                break
            _, s, sl, q, ql = sampler.sample_indices(ep)
            xs = _prepare_input(data[s], channels_last)
            xq = _prepare_input(data[q], channels_last)
            ys, yq = torch.from_numpy(sl), torch.from_numpy(ql)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = step_fn(xs, ys, xq)
            loss = F.cross_entropy(logits.float(), yq)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            accs.append(float((logits.argmax(1) == yq).float().mean()))
            done_here += 1
            bar.update(1)
            n = ep + 1
            if val_images is not None and (n % val_every == 0 or n == episodes):
                vw, vs, vq = val_shape
                acc = episode_accuracies(model, val_images, vw, vs, vq, val_episodes, val_seed, val_classes)
                mean = float(acc.mean())
                ci = _ci95(acc)
                history.append({"episode": n, "val_accuracy": mean, "ci95": list(ci),
                                "train_loss": float(np.mean(losses)), "train_accuracy": float(np.mean(accs))})
                losses, accs = [], []
                if best_acc is None or mean > best_acc:
                    best_acc, best_ci, best_ep, best_state = mean, ci, n, _state_copy(model)
                bar.set_postfix(val=f"{mean:.3f}", best=f"{best_acc:.3f}")
            if checkpoint is not None and n % every == 0 and n < episodes:
                save(n, finished=False)
    finally:
        bar.close()
    reached = start + done_here
    finished = reached >= episodes
    if checkpoint is not None:
        save(reached, finished=finished)  # restores the current state afterwards
    if finished and best_state is not None:
        model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    seconds = time.perf_counter() - t0
    return TrainResult(episodes=reached, best_val_accuracy=best_acc, best_val_ci95=best_ci, best_episode=best_ep,
                       history=history, seconds=seconds,
                       episodes_per_second=done_here / seconds if seconds > 0 else 0.0)


# ---------------------------------------------------------------------------------------- pretrain
def pretrain(
    backbone: nn.Module,
    images: ImageSet,
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    *,
    classes: Sequence[str] | None = None,
    max_steps: int | None = None,
    channels_last: bool = True,
) -> TrainResult:
    """Plain classification pre-training: backbone + linear head, cross-entropy, Adam.

    The head is thrown away; the backbone is trained in place (used by SimpleShot and the
    fine-tuning baseline, whose support-time rule works on these features).

    Args:
        backbone: a backbone from ``make_backbone`` (needs ``out_dim``).
        images: training images; ``classes`` restricts them (e.g. to base classes).
        epochs: passes over the data; max_steps: optional cap on optimizer steps.
        batch_size / lr / seed / progress: as usual; same seed -> same weights.

    Returns:
        TrainResult whose history holds per-epoch loss and accuracy.
    """
    if classes is not None:
        images = images.select_classes(classes)
    if len(images) == 0:
        raise EpisodeError(f"{images.name}: no images to pre-train on")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    out_dim = getattr(backbone, "out_dim", None)
    if out_dim is None:
        raise ModelError("the backbone has no out_dim; build it with fsl_xai.models.make_backbone")
    head = nn.Linear(out_dim, images.n_classes)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = _adam(params, lr=lr)
    data, labels = torch.from_numpy(images.images), torch.from_numpy(images.labels)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    backbone.train()
    bar = _progress_bar(total, "pre-training", progress)
    bar.unit = "step"
    history, step, t0 = [], 0, time.perf_counter()
    try:
        for epoch in range(epochs):
            order = torch.randperm(len(data), generator=g)
            losses, correct = [], 0
            seen = 0
            for i in range(0, len(data), batch_size):
                if step >= total:
                    break
                idx = order[i:i + batch_size]
                x, y = _prepare_input(data[idx], channels_last), labels[idx]
                logits = head(backbone(x))
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                step += 1
                bar.update(1)
            if seen:
                history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                                "train_accuracy": correct / seen})
                bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}")
    finally:
        bar.close()
    backbone.to(memory_format=torch.contiguous_format)
    backbone.eval()
    seconds = time.perf_counter() - t0
    return TrainResult(episodes=len(history), history=history, seconds=seconds,
                       episodes_per_second=step / seconds if seconds > 0 else 0.0)


# ---------------------------------------------------------------------------------------- defaults
#: Novel-class splits of the shared datasets: meta-train on ``base``, test on ``novel``.
DEFAULT_SPLITS: dict[str, ClassSplit] = {
    "pbc-blood": ClassSplit(base=("basophil", "eosinophil", "erythroblast", "ig", "neutrophil"),
                            novel=("lymphocyte", "monocyte", "platelet")),
    "mednist": ClassSplit(base=("AbdomenCT", "CXR", "Hand"), novel=("BreastMRI", "ChestCT", "HeadCT")),
}
DEFAULT_SPLITS["pbc-blood-64"] = DEFAULT_SPLITS["pbc-blood"]

#: built-in sets whose default models train on the set's own train split (no shared data needed)
SELF_TRAINED = ("synthetic", "synthetic-biased")

#: datasets whose default models are meta-trained on other data (MedNIST + PBC): all classes novel
CROSS_DOMAIN = ("ham10000", "ham10000-64", "breastmnist", "retinamnist")


def canonical_dataset_name(name: str) -> str:
    """The registry's canonical name for ``name`` (aliases resolved); DatasetNotFoundError if unknown."""
    from .data.registry import get_info

    return get_info(name).name


def default_class_split(dataset_name: str, class_names: Sequence[str] | None = None) -> ClassSplit | None:
    """The novel-class split of a dataset: a within-dataset split for PBC and MedNIST, or every
    class novel (given ``class_names``) for sets tested with models trained on other data; None
    when the dataset has no within-dataset split and no class names are given."""
    if dataset_name in DEFAULT_SPLITS:
        return DEFAULT_SPLITS[dataset_name]
    if class_names is not None:
        return ClassSplit(base=(), novel=tuple(class_names))
    return None


@dataclass(frozen=True)
class DefaultRecipe:
    """How a default model is trained (all of it goes into the cache key).

    ``sources`` are meta-trained on (converted to ``channels`` x ``size``), restricted to
    ``base``; model selection uses episodes of the ``val`` classes from the sources' val split.
    """

    target: str
    sources: tuple[str, ...]
    channels: int
    size: int
    base: tuple[str, ...]
    val: tuple[str, ...]
    novel: tuple[str, ...] = ()
    backbone: str = "conv4"
    n_way: int = 5
    n_shot: int = 5
    n_query: int = 5
    episodes: int = 500
    val_every: int = 100
    val_episodes: int = 100
    lr: float = 1e-3
    pretrain_steps: int = 300
    pretrain_batch: int = 64
    seed: int = 0

    def key(self, model: str) -> str:
        payload = json.dumps({"recipe": self.__dict__, "model": model, "v": 1}, sort_keys=True, default=list)
        return hashlib.sha1(payload.encode()).hexdigest()[:10]


def _load(name: str, split: str, progress: bool = False) -> ImageSet:
    from .data.registry import load_dataset

    return load_dataset(name, split=split, progress=progress)


def default_recipe(dataset_name: str, channels: int | None = None, size: int | None = None) -> DefaultRecipe:
    """The training recipe of ``default_model(dataset_name)``.

    PBC and MedNIST: meta-train on the base classes of the train split; validation episodes
    come from held-out (val-split) images of the base classes, since 8 or 6 classes leave none to
    spare. Everything else: meta-train on all MedNIST classes plus the 5 PBC base classes, converted
    to the dataset's channels and size, and select on novel-class episodes of the 3 held-out PBC
    classes (val split).
    """
    if dataset_name in SELF_TRAINED:
        # the built-in synthetic set is a ground-truth test bed for explanations, not a novel-class
        # benchmark: its model learns the lesion shapes from the set's own train split (offline)
        from .data.registry import load_dataset

        classes = load_dataset(dataset_name, split="train", progress=False).class_names
        return DefaultRecipe(target=dataset_name, sources=(dataset_name,), channels=1, size=64, base=classes,
                             val=classes, n_way=len(classes), episodes=150, val_every=50,
                             pretrain_steps=100)
    if dataset_name in DEFAULT_SPLITS:
        split = DEFAULT_SPLITS[dataset_name]
        sz = 64 if dataset_name.endswith("-64") or dataset_name == "mednist" else 28
        return DefaultRecipe(target=dataset_name, sources=(dataset_name,), channels=1 if dataset_name == "mednist" else 3,
                             size=sz, base=split.base, val=split.base, novel=split.novel,
                             n_way=min(5, len(split.base)), episodes=500 if sz <= 32 else 150,
                             val_every=100 if sz <= 32 else 50, pretrain_steps=300 if sz <= 32 else 100)
    ch = channels if channels is not None else (1 if dataset_name == "breastmnist" else 3)
    sz = size if size is not None else (64 if dataset_name.endswith("-64") else 28)
    sz = 64 if sz > 32 else 28
    pbc = "pbc-blood-64" if sz > 32 else "pbc-blood"
    pbc_split = DEFAULT_SPLITS["pbc-blood"]
    base = tuple(f"mednist:{c}" for c in ("AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT")) + \
        tuple(f"{pbc}:{c}" for c in pbc_split.base)
    val = tuple(f"{pbc}:{c}" for c in pbc_split.novel)
    return DefaultRecipe(target=f"medical-{ch}ch-{sz}px", sources=("mednist", pbc), channels=ch, size=sz,
                         base=base, val=val, episodes=500 if sz <= 32 else 150, val_every=100 if sz <= 32 else 50,
                         pretrain_steps=300 if sz <= 32 else 100)


def _source_sets(recipe: DefaultRecipe, split: str, progress: bool) -> ImageSet:
    sets = []
    for name in recipe.sources:
        s = _load(name, split, progress).convert(channels=recipe.channels, size=recipe.size)
        s.name = name
        sets.append(s)
    if len(sets) == 1:
        return sets[0]
    return ImageSet.concat(sets, name="+".join(recipe.sources))


#: models whose backbone is trained by classification pre-training (the others are meta-trained)
PRETRAINED_MODELS = ("simpleshot", "finetune")
#: models that start from the meta-trained ProtoNet backbone (prototype refinement at test time)
FROM_PROTONET = ("transductive",)


def build_model(model: str, backbone: str, in_channels: int, image_size: int | tuple[int, int],
                seed: int = 0, backbone_params: dict | None = None, **model_params) -> FewShotClassifier:
    """A freshly initialised model; same seed -> same initial weights."""
    torch.manual_seed(seed)
    net = make_backbone(backbone, in_channels=in_channels, image_size=image_size, **(backbone_params or {}))
    return make_model(model, net, **model_params)


def fit_base_statistics(model: FewShotClassifier, images: ImageSet) -> None:
    """Give models that centre features on the base classes (SimpleShot's ``fit_base``) the mean
    embedding of the base images; other models are left as they are."""
    fit_base = getattr(model, "fit_base", None)
    if callable(fit_base):
        fit_base(embed_images(model, images.images))


def _recipe_dict(recipe: DefaultRecipe) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in recipe.__dict__.items()}


def train_recipe(recipe: DefaultRecipe, model_name: str = "protonet", progress: bool = True,
                 checkpoint: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
                 ) -> tuple[FewShotClassifier, CheckpointInfo]:
    """Train a model by ``recipe``: episodic meta-training (protonet, matching), classification
    pre-training (simpleshot, finetune; one cached backbone serves both), or the meta-trained
    ProtoNet backbone (transductive)."""
    train = _source_sets(recipe, "train", progress)
    val_src = _source_sets(recipe, "val", progress)
    model = build_model(model_name, recipe.backbone, recipe.channels, recipe.size, seed=recipe.seed)
    base_set = train.select_classes(recipe.base)
    val_set = val_src.select_classes(recipe.val)
    split = ClassSplit(base=recipe.base, val=() if recipe.val == recipe.base else recipe.val, novel=recipe.novel)
    extra = {"recipe": _recipe_dict(recipe)}
    common = dict(dataset=train.name, data_fingerprint=base_set.fingerprint(), classes=recipe.base,
                  class_split=split.to_dict())
    if model_name in PRETRAINED_MODELS or model_name in FROM_PROTONET:
        root = Path(_cache_dir(cache_dir)) / "models"
        if model_name in PRETRAINED_MODELS:
            source = root / f"{recipe.target}-pretrained-{recipe.backbone}-{recipe.key('pretrained')}.pt"
            if source.exists():
                model.backbone.load_state_dict(torch.load(source, map_location="cpu", weights_only=True))
                how = {"backbone": "classification pre-training (cached)"}
            else:
                result = pretrain(model.backbone, base_set, epochs=100, batch_size=recipe.pretrain_batch,
                                  max_steps=recipe.pretrain_steps, seed=recipe.seed, progress=progress)
                _atomic_torch_save(model.backbone.state_dict(), source)
                how = {"backbone": "classification pre-training", "history": result.history}
            extra["pretrain"] = {"steps": recipe.pretrain_steps, "batch_size": recipe.pretrain_batch}
        else:
            proto, proto_info = default_model_from_recipe(recipe, "protonet", progress, cache_dir)
            model.backbone.load_state_dict(proto.backbone.state_dict())
            how = {"backbone": "meta-trained ProtoNet backbone", "protonet_val": proto_info.val_metrics}
        fit_base_statistics(model, base_set)
        model.eval()
        info = CheckpointInfo.for_model(model, val_metrics=validation_accuracy(model, val_set, recipe.n_way, recipe.n_shot, recipe.val_episodes, recipe.seed),
                                        progress={"finished": True, **how}, extra=extra, **common)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, info)
        return model, info
    result = train_episodic(model, base_set, recipe.n_way, recipe.n_shot, recipe.n_query, recipe.episodes,
                            seed=recipe.seed, val_images=val_set, val_every=recipe.val_every, lr=recipe.lr,
                            progress=progress, checkpoint=checkpoint, resume=checkpoint is not None,
                            val_episodes=recipe.val_episodes, class_split=split, extra_info=extra)
    if checkpoint is not None:
        return load_checkpoint(checkpoint)
    return model, CheckpointInfo.for_model(model, val_metrics=result.val_metrics(), extra=extra, **common)


def _atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def default_model_from_recipe(recipe: DefaultRecipe, model: str = "protonet", progress: bool = True,
                              cache_dir: str | os.PathLike | None = None) -> tuple[FewShotClassifier, CheckpointInfo]:
    """Load the cached model for ``recipe``, training and caching it first when missing."""
    root = Path(_cache_dir(cache_dir)) / "models"
    path = root / f"{recipe.target}-{model}-{recipe.key(model)}.pt"
    if path.exists():
        try:
            return load_checkpoint(path)
        except CheckpointError:
            path.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, never trusted
    if progress:
        print(f"Training the default {model} model for {recipe.target} once (cached at {path}) ...", flush=True)
    # a stable name, so that an interrupted first training resumes where it stopped
    tmp = path.with_name(f".{path.name}.partial")
    try:
        train_recipe(recipe, model, progress=progress, checkpoint=tmp, cache_dir=cache_dir)
    except CheckpointError:
        tmp.unlink(missing_ok=True)  # an unusable partial run: start over
        train_recipe(recipe, model, progress=progress, checkpoint=tmp, cache_dir=cache_dir)
    os.replace(tmp, path)
    return load_checkpoint(path)


def default_model(dataset_name: str, model: str = "protonet", progress: bool = True,
                  cache_dir: str | os.PathLike | None = None) -> tuple[FewShotClassifier, CheckpointInfo]:
    """A ready model for a dataset, trained on first use (a small budget) and cached.

    PBC and MedNIST models are meta-trained on the dataset's base classes (``DEFAULT_SPLITS``)
    and meant for its novel classes; HAM10000, BreastMNIST, RetinaMNIST and other sets get a
    model meta-trained on MedNIST + PBC converted to their channels and size (one model per
    channels x size, shared). Later calls load the checkpoint cached under
    ``cache_dir()/models``.

    Args:
        dataset_name: a registered dataset name (``pbc-blood``, ``ham10000``, ...).
        model: a registered model name.
        progress: progress bars while training.
        cache_dir: where to cache (default: fsl_xai.config.cache_dir()).

    Returns:
        (model in eval mode, CheckpointInfo).

    Raises:
        ModelError: unknown model. DatasetNotFoundError: unknown dataset, or training data
        (MedNIST, PBC) not available.
    """
    from .models import list_models

    if model not in list_models():
        raise ModelError(f"unknown model {model!r}; choose one of {list_models()}")
    from .data.registry import get_info

    info = get_info(dataset_name)
    name = info.name
    if name in DEFAULT_SPLITS or name in CROSS_DOMAIN or name in SELF_TRAINED:
        recipe = default_recipe(name)
    else:
        recipe = default_recipe(name, channels=int(info.channels), size=int(info.image_size))
    return default_model_from_recipe(recipe, model, progress, cache_dir)
