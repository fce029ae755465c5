"""The training loops: episodic meta-training and classification pre-training.

``train_episodic`` meta-trains any registered few-shot model on episodes drawn from base classes,
with one backbone pass over support and query together (``model.episode_logits``), keeps the state
that scores best on validation episodes, and can write and resume checkpoints. ``pretrain`` trains a
backbone with a linear classification head (for SimpleShot and the fine-tuning baseline).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import CheckpointInfo, load_checkpoint, save_checkpoint, training_state
from ..data.imageset import ImageSet
from ..episodes import ClassSplit, EpisodeSampler
from ..errors import CheckpointError, EpisodeError, ModelError
from ..intervals import mean_interval
from ..models.base import FewShotClassifier
from .validation import VALIDATION_SEED_OFFSET, episode_accuracies, validation_shape


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
        """The validation fields recorded in a checkpoint's ``val_metrics``."""
        return {"best_val_accuracy": self.best_val_accuracy,
                "best_val_ci95": list(self.best_val_ci95) if self.best_val_ci95 else None,
                "best_episode": self.best_episode, "history": self.history}


# ---------------------------------------------------------------------------------------- helpers
def _progress_bar(total: int, desc: str, enabled: bool, initial: int = 0) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, leave=False,
                unit="ep", dynamic_ncols=True)


def _prepare_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _set_memory_format(module: nn.Module, memory_format: torch.memory_format) -> None:
    """Lay out the module's 4-d weights in ``memory_format`` (channels_last: faster CPU convolutions)."""
    # Module.to takes memory_format at run time, but torch's type stubs omit it
    module.to(memory_format=memory_format)  # type: ignore[call-overload]


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _adam(params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
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


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run a block with ``n`` torch threads, then restore the count. Float reductions are ordered
    by the thread count (one thread everywhere gives identical results in every process), and small
    products only pay for a second thread's synchronisation (100 held-in episodes from embeddings:
    0.3-0.6 s on one thread, 6 s on two busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
        EpisodeError: the data cannot give such episodes. ModelError: the images have other channels
        than the backbone expects. CheckpointError: resume from a checkpoint of other data, model or
        settings.
    """
    if episodes < 1:
        raise EpisodeError(f"episodes must be at least 1, got {episodes}")
    if val_every < 1:
        raise EpisodeError(f"val_every must be at least 1, got {val_every}")
    data = torch.from_numpy(train_images.images)
    model.check_images(data, f"the images of {train_images.name}")
    sampler = EpisodeSampler(train_images, n_way, n_shot, n_query, classes=classes, seed=seed)
    train_classes = tuple(classes) if classes is not None else train_images.class_names
    val_shape = validation_shape(val_images, n_way, n_shot, val_classes) if val_images is not None else None
    val_seed = seed + VALIDATION_SEED_OFFSET  # fixed validation episodes, never the training ones

    torch.manual_seed(seed)
    if channels_last:
        _set_memory_format(model, torch.channels_last)
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
            _set_memory_format(model, torch.channels_last)

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
            if val_images is not None and val_shape is not None and (n % val_every == 0 or n == episodes):
                vw, vs, vq = val_shape
                interval = mean_interval(episode_accuracies(model, val_images, vw, vs, vq, val_episodes, val_seed,
                                                            val_classes))
                mean, ci = interval.estimate, interval.as_tuple()
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
    _set_memory_format(model, torch.contiguous_format)
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
        _set_memory_format(backbone, torch.channels_last)
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
    _set_memory_format(backbone, torch.contiguous_format)
    backbone.eval()
    seconds = time.perf_counter() - t0
    return TrainResult(episodes=len(history), history=history, seconds=seconds,
                       episodes_per_second=step / seconds if seconds > 0 else 0.0)
