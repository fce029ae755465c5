"""Classify images with an fsl-xai bundle using only numpy and onnxruntime (Pillow reads image files).

    python predict.py IMAGE [IMAGE ...]   # .png/.jpg (needs Pillow), or .npy (N, C, H, W) floats in [0, 1]
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Bundle:
    """The ONNX backbone, the class vectors and the scoring rule of one exported model."""

    def __init__(self, folder=None):
        folder = Path(folder) if folder else Path(__file__).resolve().parent
        self.spec = json.loads((folder / "bundle.json").read_text())
        self.classes, self.rule, self.transform = self.spec["classes"], self.spec["rule"], self.spec["transform"]
        with np.load(folder / self.spec["arrays"], allow_pickle=False) as stored:
            self.arrays = {name: stored[name].astype(np.float64) for name in stored.files}
        self.session = ort.InferenceSession(str(folder / self.spec["model"]), providers=["CPUExecutionProvider"])

    def read(self, path):
        """An image file or .npy array -> float32 (N, C, H, W) in [0, 1], as the model expects."""
        t = self.transform
        if str(path).endswith(".npy"):
            images = np.load(path, allow_pickle=False).astype(np.float32)
            return images[None] if images.ndim == 3 else images
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert("L" if t["channels"] == 1 else "RGB")
            if image.size != (t["width"], t["height"]):
                image = image.resize((t["width"], t["height"]), Image.Resampling.BICUBIC)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
        return (pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))[None]

    def embed(self, images):
        """float32 images (N, C, H, W) in [0, 1] -> embeddings (N, D)."""
        t = self.transform
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (t["channels"], t["height"], t["width"]):
            raise ValueError(f"images must be (N, {t['channels']}, {t['height']}, {t['width']}), got {images.shape}")
        return self.session.run(None, {self.spec["input"]: images})[0].astype(np.float64)

    def scores(self, embeddings):
        """Embeddings (N, D) -> class scores (N, n_classes); the highest wins (minus a distance for
        distance rules)."""
        rule, a = self.rule, self.arrays
        x = embeddings - a["center"] if "center" in a else embeddings
        x = unit(x) if rule["l2_normalize"] else x
        ref = a["vectors"]
        if rule["name"] == "squared_euclidean":
            return -((x[:, None, :] - ref[None, :, :]) ** 2).sum(-1)
        if rule["name"] == "cosine":
            return rule["scale"] * unit(x) @ unit(ref).T
        if rule["name"] == "linear":
            return x @ ref.T + a["bias"]
        if rule["name"] == "matching":  # log of the attention on each class's support images
            sims = unit(x) @ unit(ref).T / rule["temperature"]
            weights = np.exp(sims - sims.max(1, keepdims=True))
            return np.log(weights @ a["member"].T) - np.log(weights.sum(1, keepdims=True))
        raise ValueError(f"unknown scoring rule {rule['name']!r}")

    def predict(self, images):
        """float32 images (N, C, H, W) -> (predicted class names, scores (N, n_classes))."""
        scores = self.scores(self.embed(images))
        return [self.classes[i] for i in scores.argmax(1)], scores


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    bundle = Bundle()
    for path in sys.argv[1:]:
        names, scores = bundle.predict(bundle.read(path))
        for i, (name, row) in enumerate(zip(names, scores, strict=True)):
            print(json.dumps({"image": path, "index": i, "class": name,
                              "scores": dict(zip(bundle.classes, row.round(6).tolist(), strict=True))}))
