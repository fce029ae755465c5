"""Training, checkpoints and default models: determinism, resume, model selection, bad files."""

from __future__ import annotations

import pytest
import torch

import fsl_xai.training.zoo as zoo
from fsl_xai.checkpoints import CheckpointInfo, load_checkpoint, save_checkpoint
from fsl_xai.errors import CheckpointError, ModelError
from fsl_xai.testing import make_imageset, tiny_model
from fsl_xai.training import (
    DefaultRecipe,
    default_model,
    default_model_from_recipe,
    episode_accuracies,
    pretrain,
    train_episodic,
)


@pytest.fixture(scope="module")
def toy():
    train = make_imageset(n_classes=4, n_per_class=10, channels=1, size=28, seed=1, name="toy-train")
    val = make_imageset(n_classes=3, n_per_class=8, channels=1, size=28, seed=2, name="toy-val")
    return train, val


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _train(toy, seed=0, **kw):
    train, val = toy
    model = tiny_model(channels=1, size=28, width=8, seed=0)
    res = train_episodic(model, train, n_way=3, n_shot=2, n_query=2, episodes=kw.pop("episodes", 6), seed=seed,
                         val_images=kw.pop("val_images", val), val_every=kw.pop("val_every", 3), lr=1e-2,
                         progress=False, val_episodes=10, **kw)
    return model, res


def test_same_seed_gives_identical_weights_and_other_seed_differs(toy):
    a, ra = _train(toy, seed=3)
    b, rb = _train(toy, seed=3)
    c, _ = _train(toy, seed=4)
    start = _weights(tiny_model(channels=1, size=28, width=8, seed=0))
    assert _same(_weights(a), _weights(b))
    assert ra.history == rb.history
    assert not _same(_weights(a), _weights(c))
    assert not _same(_weights(a), start)  # training changed the weights


def test_best_validation_state_is_kept(toy):
    train, val = toy
    model, res = _train(toy, episodes=9, val_every=3)
    assert [h["episode"] for h in res.history] == [3, 6, 9]
    best = max(h["val_accuracy"] for h in res.history)
    assert res.best_val_accuracy == pytest.approx(best)
    assert res.best_episode in (3, 6, 9)
    # scoring the returned model on the same validation episodes reproduces the best score,
    # so the model holds the selected state (not merely the last one)
    acc = episode_accuracies(model, val, 3, 2, 6, 10, seed=0 + 1_000_003)
    assert acc.mean() == pytest.approx(res.best_val_accuracy)


def test_checkpoint_round_trip(toy, tmp_path):
    model, res = _train(toy)
    path = tmp_path / "ckpt" / "m.pt"
    train, _ = toy
    info = CheckpointInfo.for_model(model, dataset=train.name, data_fingerprint=train.fingerprint(),
                                    classes=train.class_names, val_metrics=res.val_metrics())
    save_checkpoint(path, model, info)
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # no temporary file left
    loaded, linfo = load_checkpoint(path)
    assert loaded.fingerprint() == model.fingerprint()
    assert (linfo.backbone, linfo.in_channels, linfo.image_size) == ("conv4", 1, (28, 28))
    assert linfo.backbone_params == {"width": 8}
    assert linfo.data_fingerprint == train.fingerprint()
    assert linfo.val_metrics["best_val_accuracy"] == pytest.approx(res.best_val_accuracy)
    x = torch.from_numpy(train.images[:6])
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    model.eval()
    assert torch.allclose(model.fit(x, y)(x), loaded.fit(x, y)(x))


def test_resume_equals_uninterrupted_training(toy, tmp_path):
    full, full_res = _train(toy, episodes=8, val_every=2)
    path = tmp_path / "run.pt"
    part, part_res = _train(toy, episodes=8, val_every=2, checkpoint=path, stop_after=5)
    assert part_res.episodes == 5
    _, info = load_checkpoint(path)
    assert info.progress["episode"] == 5 and info.progress["finished"] is False
    resumed, res = _train(toy, episodes=8, val_every=2, checkpoint=path, resume=True)
    assert res.episodes == 8
    assert _same(_weights(resumed), _weights(full))
    assert res.history == full_res.history
    _, info = load_checkpoint(path)
    assert info.progress["finished"] is True and info.progress["episode"] == 8


def test_resume_with_other_settings_is_refused(toy, tmp_path):
    path = tmp_path / "run.pt"
    _train(toy, episodes=4, val_every=2, checkpoint=path, stop_after=2)
    with pytest.raises(CheckpointError, match="settings differ"):
        _train(toy, seed=9, episodes=4, val_every=2, checkpoint=path, resume=True)


@pytest.mark.parametrize("other, what", [
    (dict(channels=3, size=28, width=8), "input channels"),
    (dict(channels=1, size=28, width=8, backbone="resnet12"), "backbone"),
    (dict(channels=1, size=28, width=16), "backbone parameters"),
])
def test_checkpoint_into_another_backbone_or_channel_count(tmp_path, other, what):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model(channels=1, size=28, width=8))
    with pytest.raises(CheckpointError, match=what) as err:
        load_checkpoint(path, tiny_model(**other))
    assert "checkpoint" in str(err.value)


def test_corrupt_missing_or_foreign_checkpoint(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", tiny_model(width=8))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    foreign = tmp_path / "foreign.pt"
    torch.save(tiny_model(width=8).state_dict(), foreign)
    for path, msg in [(truncated, "not a readable checkpoint"), (garbage, "not a readable checkpoint"),
                      (foreign, "not an fsl-xai checkpoint"), (tmp_path / "missing.pt", "not found"),
                      (tmp_path, "folder")]:
        with pytest.raises(CheckpointError, match=msg):
            load_checkpoint(path)


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model(width=8, seed=1))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, tiny_model(width=8, seed=2))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_training_refuses_images_with_other_channels(toy):
    model = tiny_model(channels=3, size=28, width=8)
    with pytest.raises(ModelError, match="channel"):
        train_episodic(model, toy[0], 3, 2, 2, episodes=2, progress=False)


def test_pretrain_is_deterministic_and_learns(toy):
    train, _ = toy
    outs = []
    for _ in range(2):
        model = tiny_model(channels=1, size=28, width=8, seed=0)
        res = pretrain(model.backbone, train, epochs=4, batch_size=8, lr=1e-2, seed=5, progress=False)
        outs.append((_weights(model), res.history))
    assert _same(outs[0][0], outs[1][0])
    hist = outs[0][1]
    assert len(hist) == 4 and hist[-1]["train_loss"] < hist[0]["train_loss"]


def test_default_model_is_trained_once_then_loaded(tmp_path, monkeypatch):
    recipe = DefaultRecipe(target="synthetic-test", sources=("synthetic",), channels=1, size=28,
                           base=("round", "spiculated", "ring", "textured"),
                           val=("round", "spiculated", "ring", "textured"),
                           n_way=3, n_shot=2, n_query=2, episodes=4, val_every=2, val_episodes=5)
    model, info = default_model_from_recipe(recipe, "protonet", progress=False, cache_dir=tmp_path)
    files = list((tmp_path / "models").iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"
    assert info.progress["finished"] and info.val_metrics["best_val_accuracy"] is not None
    assert info.extra["recipe"]["sources"] == ["synthetic"]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model should have been loaded")

    monkeypatch.setattr(zoo, "train_recipe", no_training)
    again, _ = default_model_from_recipe(recipe, "protonet", progress=False, cache_dir=tmp_path)
    assert again.fingerprint() == model.fingerprint()
    monkeypatch.undo()
    files[0].write_bytes(b"damaged")  # a damaged cache entry is retrained, not trusted
    third, _ = default_model_from_recipe(recipe, "protonet", progress=False, cache_dir=tmp_path)
    assert third.fingerprint() == model.fingerprint()


def test_default_model_unknown_names(tmp_path):
    from fsl_xai.errors import DatasetNotFoundError

    with pytest.raises(ModelError, match="unknown model"):
        default_model("pbc-blood", model="resnet-magic", cache_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="unknown dataset"):
        default_model("no-such-set", cache_dir=tmp_path)


@pytest.mark.parametrize("name", ["protonet", "simpleshot", "matching", "finetune", "transductive"])
def test_every_model_trains_and_round_trips_through_a_checkpoint(toy, tmp_path, name):
    from fsl_xai.models import list_models

    if name not in list_models():
        pytest.skip(f"{name} is not registered")
    train, val = toy
    model = tiny_model(channels=1, size=28, width=8, model=name)
    res = train_episodic(model, train, 3, 2, 2, episodes=2, seed=0, val_images=val, val_every=2,
                         val_episodes=3, progress=False, checkpoint=tmp_path / f"{name}.pt")
    assert res.episodes == 2 and res.best_val_accuracy is not None
    loaded, info = load_checkpoint(tmp_path / f"{name}.pt")
    assert info.model == name and type(loaded) is type(model)
    assert loaded.fingerprint() == model.fingerprint()


def test_fit_base_statistics_centres_simpleshot_and_leaves_other_models(toy):
    from fsl_xai.embeddings import embed_all
    from fsl_xai.training import fit_base_statistics

    train, _ = toy
    simple = tiny_model(channels=1, size=28, width=8, model="simpleshot")
    assert not simple.has_base_mean
    fit_base_statistics(simple, train)
    assert simple.has_base_mean
    torch.testing.assert_close(simple.base_mean_, embed_all(simple, train, cache=False).mean(0))
    proto = tiny_model(channels=1, size=28, width=8)
    before = _weights(proto)
    fit_base_statistics(proto, train)
    assert _same(_weights(proto), before)


def test_validation_records_the_mean_and_its_normal_interval(toy):
    from fsl_xai.intervals import mean_interval
    from fsl_xai.training import validation_accuracy

    _, val = toy
    model = tiny_model(channels=1, size=28, width=8)
    before = _weights(model)
    out = validation_accuracy(model, val, n_way=3, n_shot=2, episodes=12, seed=4)
    acc = episode_accuracies(model, val, *out["val_shape"], 12, seed=4 + 1_000_003)
    expected = mean_interval(acc, method="normal")
    assert out["best_val_accuracy"] == pytest.approx(acc.mean())
    assert out["best_val_ci95"] == pytest.approx([expected.low, expected.high])
    assert out["best_val_ci95"][0] < out["best_val_accuracy"] < out["best_val_ci95"][1] or acc.std() == 0
    assert _same(_weights(model), before)  # scoring fits episodes without changing the model
