"""External backbones (timm:, torchscript:, py:): wrapping, input transforms, layers, checkpoints,
the embedding cache's key, and the errors for everything that can go wrong."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fsl_xai.checkpoints import load_checkpoint, save_checkpoint
from fsl_xai.embeddings import embed_all, embedding_fingerprint
from fsl_xai.errors import CheckpointError, ModelError
from fsl_xai.models import make_backbone, make_model
from fsl_xai.models.external import TORCHSCRIPT_INPUT_FILE, ExternalBackbone
from fsl_xai.testing import quietly

from . import _factories as F

PY = "py:tests.fsl_xai.models._factories:"



@pytest.fixture(scope="module")
def ts_files(tmp_path_factory) -> dict[str, Path]:
    """A scripted CNN that states its input in an extra file, and a traced CNN returning a map."""
    folder = tmp_path_factory.mktemp("ts")
    torch.manual_seed(1)
    scripted = quietly(torch.jit.script, F.SmallCNN())
    stated = json.dumps({"input_size": [1, 32, 32], "mean": [0.5], "std": [0.25]})
    quietly(torch.jit.save, scripted, str(folder / "cnn.pt"), _extra_files={TORCHSCRIPT_INPUT_FILE: stated})
    traced = quietly(torch.jit.trace, F.MapCNN().eval(), torch.rand(1, 3, 32, 32))
    quietly(torch.jit.save, traced, str(folder / "map.pt"))
    return {"cnn": folder / "cnn.pt", "map": folder / "map.pt", "scripted": scripted}


def test_py_factory_states_its_transform_and_normalises_inside_forward():
    net = make_backbone(PY + "small_cnn", in_channels=3, image_size=28)
    assert isinstance(net, ExternalBackbone) and net.backbone_name == PY + "small_cnn"
    t = net.transform
    assert (net.in_channels, net.image_size, net.out_dim) == (1, (32, 32), 16)
    assert (t.mean, t.std) == ((0.5,), (0.25,)) and t.sources == {"image_size": "model", "channels": "model",
                                                                     "normalisation": "model"}
    x = torch.rand(3, 1, 32, 32)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), net.net((x - 0.5) / 0.25), atol=1e-6)
        fmap = net.feature_map(x)
    assert net.default_cam_layer == "net.features" and fmap.shape == (3, 16, 8, 8)
    assert torch.allclose(fmap.mean(dim=(2, 3)), net(x), atol=1e-5)  # the pooled map is the embedding


def test_options_override_what_the_network_states():
    net = make_backbone(PY + "small_cnn", 1, 32, input_size="24", normalise=((0.1,), (0.2,)))
    assert net.image_size == (24, 24) and net.transform.sources["image_size"] == "option"
    assert net.transform.mean == (0.1,) and net.transform.sources["normalisation"] == "option"
    plain = make_backbone(PY + "map_cnn", in_channels=3, image_size=40)  # states nothing: the data's input
    assert (plain.in_channels, plain.image_size, plain.transform.is_identity) == (3, (40, 40), True)
    assert set(plain.transform.sources.values()) == {"default"}
    assert "3x40x40, no normalisation" in plain.transform.describe()


@pytest.mark.parametrize(("factory", "block"), [("small_vit", 0), ("small_vit_mean", 1), ("frozen_vit", 0)])
def test_vit_tokens_become_a_map_on_the_patch_grid_without_changing_the_output(factory, block):
    """The map is the last block whose patch tokens reach the embedding: with a class-token
    embedding the last block's patch tokens are dropped, so it is the block before."""
    torch.manual_seed(0)
    net = make_backbone(PY + factory, 1, 32).eval()
    assert net.default_cam_layer == "token_map" and "token_map" in net.spatial_layers
    assert all(p.grad is None for p in net.parameters())  # finding the layer left no gradients behind
    plain = F.SmallViT(pool=net.net.pool).eval()
    plain.load_state_dict(net.net.state_dict())
    x = torch.rand(2, 1, 32, 32)
    seen = []
    handle = net.net.encoder.layers[block].register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        fmap = net.feature_map(x)
        emb = net(x)
    handle.remove()
    assert fmap.shape == (2, 24, 4, 4)  # 16 patch tokens of 24 channels, class token dropped
    tokens = seen[-1]
    assert tokens.shape == (2, 17, 24)
    assert torch.equal(fmap.flatten(2).transpose(1, 2), tokens[:, 1:])
    with torch.no_grad():
        assert torch.allclose(emb, plain(x), atol=1e-5)


def test_torchscript_script_reads_the_input_file_and_has_no_hookable_layer(ts_files):
    net = make_backbone(f"torchscript:{ts_files['cnn']}", 3, 28).eval()
    assert (net.in_channels, net.image_size, net.transform.mean, net.out_dim) == (1, (32, 32), (0.5,), 16)
    assert net.kind == "torchscript" and not net.hookable and net.default_cam_layer is None
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), ts_files["scripted"]((x - 0.5) / 0.25), atol=1e-6)
    with pytest.raises(ModelError, match="no spatial feature map: its submodules run inside compiled TorchScript"):
        net.feature_map(x)


def test_torchscript_map_output_is_pooled_and_is_the_layer(ts_files):
    net = make_backbone(f"torchscript:{ts_files['map']}", 3, 32).eval()
    assert net.default_cam_layer == "output_map" and net.out_dim == 16
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), net.feature_map(x).mean(dim=(2, 3)), atol=1e-6)


def test_a_copy_of_a_torchscript_backbone_keeps_leaf_parameters(ts_files):
    net = make_backbone(f"torchscript:{ts_files['cnn']}", 1, 32)
    twin = copy.deepcopy(net).to(memory_format=torch.channels_last)
    assert all(p.is_leaf for p in twin.parameters())
    for p in twin.parameters():
        p.requires_grad_(False)  # what the explanation's fast copy does
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(twin(x), net(x), atol=1e-5)


@pytest.mark.parametrize(("spec", "channels", "message"), [
    ("torchscript:", 1, "not understood"),
    ("py:tests.fsl_xai.models._factories", 1, "py:MODULE:FUNCTION"),
    ("torchscript:/no/such/model.pt", 1, "file not found"),
    ("py:no_such_package.nets:make", 1, "cannot import module 'no_such_package.nets'"),
    (PY + "no_function", 1, "has no function 'no_function'"),
    (PY + "not_a_module", 1, r"returned str, not a torch nn.Module"),
    (PY + "needs_arguments", 1, r"needs_arguments\(\) failed \(TypeError: .*without arguments"),
    ("py:os:abort", 1, "'os' is a module of Python's standard library"),
    (PY + "three_d_output", 1, r"returns \(2, 4, 64\) for 2 images; it must return embeddings \(N, D\)"),
    (PY + "map_cnn", 1, "fails on 1-channel 32x32 images .*--input-channels"),
])
def test_bad_backbones_say_what_is_wrong(spec, channels, message):
    with pytest.raises(ModelError, match=message):
        make_backbone(spec, channels, 32)


def test_a_file_that_is_not_torchscript_is_refused(tmp_path):
    bad = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, bad)
    with pytest.raises(ModelError, match="is not a TorchScript archive"):
        make_backbone(f"torchscript:{bad}", 1, 32)


def test_weights_from_a_file_and_their_errors(tmp_path):
    torch.manual_seed(3)
    source = F.SmallCNN()
    torch.save(source.state_dict(), tmp_path / "w.pt")
    net = make_backbone(PY + "small_cnn", 1, 32, weights=tmp_path / "w.pt")
    assert torch.equal(net.net.features[0].weight, source.features[0].weight)
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="do not fit"):
        make_backbone(PY + "small_cnn", 1, 32, weights=tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="weights 'hub' are for timm"):
        make_backbone(PY + "small_cnn", 1, 32, weights="hub")


def _timm_importable() -> bool:
    try:
        import timm  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(_timm_importable(), reason="timm imports here; the missing-timm message cannot be shown")
def test_timm_missing_says_how_to_install_it():
    with pytest.raises(ModelError, match=r"pip install timm.*torchvision"):
        make_backbone("timm:resnet18", 3, 32)


@pytest.mark.skipif(not _timm_importable(),
                    reason="timm is not importable here (it needs torchvision, which does not import with this torch)")
def test_timm_model_with_weights_from_a_file(tmp_path):  # pragma: no cover - runs only where timm works
    import timm

    torch.manual_seed(0)
    source = timm.create_model("resnet10t", pretrained=False, num_classes=0, in_chans=3)
    torch.save(source.state_dict(), tmp_path / "r.pt")
    net = make_backbone("timm:resnet10t", 3, 64, weights=tmp_path / "r.pt").eval()
    assert net.transform.sources["normalisation"] == "model" and net.default_cam_layer is not None
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), source.eval()((x - net.mean) / net.std), atol=1e-5)


@pytest.mark.parametrize("kind", ["py_cnn", "py_vit", "torchscript"])
def test_checkpoint_round_trip(kind, ts_files, tmp_path):
    spec, c = {"py_cnn": (PY + "small_cnn", 1), "py_vit": (PY + "small_vit", 1),
               "torchscript": (f"torchscript:{ts_files['cnn']}", 1)}[kind]
    model = make_model("protonet", make_backbone(spec, c, 32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)  # weights that differ from what the spec alone builds
    path = save_checkpoint(tmp_path / "m.pt", model)
    again, info = load_checkpoint(path)
    assert info.backbone == spec and info.backbone_params["transform"] == model.backbone.transform.to_dict()
    x = torch.rand(3, c, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.embed(x), model.embed(x))
    assert again.fingerprint() == model.fingerprint()
    assert again.backbone.default_cam_layer == model.backbone.default_cam_layer


def test_a_torchscript_backbone_travels_inside_its_checkpoint(ts_files, tmp_path):
    original = tmp_path / "moved.pt"
    original.write_bytes(ts_files["cnn"].read_bytes())
    model = make_model("protonet", make_backbone(f"torchscript:{original}", 1, 32)).eval()
    path = save_checkpoint(tmp_path / "m.pt", model)
    original.unlink()  # the checkpoint does not need the file any more
    again, _ = load_checkpoint(path)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.embed(x), model.embed(x))
    payload = torch.load(path, weights_only=True)
    payload["backbone_archive"][100] ^= 1  # a damaged archive is caught by its sha256
    torch.save(payload, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match="does not match its recorded sha256"):
        load_checkpoint(tmp_path / "damaged.pt")


def test_a_checkpoint_whose_factory_is_gone_says_so(tmp_path):
    model = make_model("protonet", make_backbone(PY + "small_cnn", 1, 32))
    path = save_checkpoint(tmp_path / "m.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["info"]["backbone"] = "py:vanished_package.nets:small_cnn"
    torch.save(payload, tmp_path / "gone.pt")
    with pytest.raises(CheckpointError, match="cannot be rebuilt here .*cannot import module 'vanished_package.nets'"):
        load_checkpoint(tmp_path / "gone.pt")


def test_the_embedding_cache_keys_on_the_backbone_identity(ts_files):
    torch.manual_seed(0)
    a = make_model("protonet", make_backbone(PY + "small_cnn", 1, 32)).eval()
    # the same weights with another normalisation, and as a TorchScript network: other backbones
    b = make_model("protonet", make_backbone(PY + "small_cnn", 1, 32, normalise=((0.0,), (1.0,)))).eval()
    b.load_state_dict(a.state_dict())
    ts = make_model("protonet", make_backbone(f"torchscript:{ts_files['cnn']}", 1, 32)).eval()
    ts.load_state_dict(a.state_dict())
    same = make_model("protonet", make_backbone(PY + "small_cnn", 1, 32)).eval()
    same.load_state_dict(a.state_dict())
    keys = [embedding_fingerprint(m) for m in (a, b, ts, same)]
    assert len(set(keys[:3])) == 3 and keys[3] == keys[0]
    images = np.random.default_rng(0).random((5, 1, 32, 32), dtype=np.float32)
    emb_a, emb_b = embed_all(a, images), embed_all(b, images)
    assert not torch.allclose(emb_a, emb_b)  # b did not get a's cached rows
    with torch.no_grad():
        assert torch.allclose(emb_b, b.embed(torch.from_numpy(images)), atol=1e-5)
