"""What the default models are trained on: class splits of the shared datasets and training recipes.

Plain data and rules, no training: :data:`DEFAULT_SPLITS` (base / novel classes of PBC and
MedNIST), :func:`default_class_split`, :class:`DefaultRecipe` (everything that goes into a default
model's cache key) and :func:`default_recipe`. :mod:`fsl_xai.training.zoo` trains and caches the
models these recipes describe.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from ..episodes import ClassSplit

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
    from ..data.registry import get_info

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
        """A short hash of the recipe and the model name: the default model's cache key."""
        payload = json.dumps({"recipe": self.__dict__, "model": model, "v": 1}, sort_keys=True, default=list)
        return hashlib.sha1(payload.encode()).hexdigest()[:10]

    def to_dict(self) -> dict:
        """The recipe as plain values (tuples as lists), as recorded in checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


#: models whose backbone is trained by classification pre-training (the others are meta-trained)
PRETRAINED_MODELS = ("simpleshot", "finetune")
#: models that start from the meta-trained ProtoNet backbone (prototype refinement at test time)
FROM_PROTONET = ("transductive",)


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
        from ..data.registry import load_dataset

        classes = load_dataset(dataset_name, split="train", progress=False).class_names
        return DefaultRecipe(target=dataset_name, sources=(dataset_name,), channels=1, size=64, base=classes,
                             val=classes, n_way=len(classes), episodes=150, val_every=50,
                             pretrain_steps=100)
    if dataset_name in DEFAULT_SPLITS:
        split = DEFAULT_SPLITS[dataset_name]
        sz = 64 if dataset_name.endswith("-64") or dataset_name == "mednist" else 28
        return DefaultRecipe(target=dataset_name, sources=(dataset_name,),
                             channels=1 if dataset_name == "mednist" else 3, size=sz, base=split.base,
                             val=split.base, novel=split.novel,
                             n_way=min(5, len(split.base)), episodes=500 if sz <= 32 else 150,
                             val_every=100 if sz <= 32 else 50, pretrain_steps=300 if sz <= 32 else 100)
    ch = channels if channels is not None else (1 if dataset_name == "breastmnist" else 3)
    sz = size if size is not None else (64 if dataset_name.endswith("-64") else 28)
    sz = 64 if sz > 32 else 28
    pbc = "pbc-blood-64" if sz > 32 else "pbc-blood"
    pbc_split = DEFAULT_SPLITS["pbc-blood"]
    base = (tuple(f"mednist:{c}" for c in ("AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT"))
            + tuple(f"{pbc}:{c}" for c in pbc_split.base))
    val = tuple(f"{pbc}:{c}" for c in pbc_split.novel)
    return DefaultRecipe(target=f"medical-{ch}ch-{sz}px", sources=("mednist", pbc), channels=ch, size=sz,
                         base=base, val=val, episodes=500 if sz <= 32 else 150, val_every=100 if sz <= 32 else 50,
                         pretrain_steps=300 if sz <= 32 else 100)
