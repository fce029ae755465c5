"""The bundle's model card: what the model is, what it was trained and checked on, how well it did
(with n and a 95% interval), and how to use it; as JSON and as Markdown.

No sample id or file name is written: the support set is described by its data set, split, seed
and counts, from which ``fsl-xai export-model`` draws it again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..intervals import proportion_interval

if TYPE_CHECKING:
    from ..checkpoints import CheckpointInfo
    from ..data import ImageSet
    from ..evaluation import EvaluationResult
    from ..guard import DomainGuard
    from ..models import FewShotClassifier
    from .onnx_export import Parity

LIMITATIONS = (
    "A few-shot model answers every image with one of its classes, whatever the image shows: an image of "
    "another kind still gets a class. Use it only on images like those it was validated on.",
    "The accuracies were measured on the data named here; other sites, scanners or stainings may do worse.",
    "Not a medical device: a prediction supports a trained person's judgement and does not replace it.",
)


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.3f}"


def _options(params: dict[str, Any]) -> str:
    return " (" + ", ".join(f"{k} = {v}" for k, v in params.items()) + ")" if params else ""


def _selection(metrics: dict[str, Any]) -> str:
    if "best_val_accuracy" not in metrics:
        return "none recorded"
    ci = metrics.get("best_val_ci95") or [None, None]
    return (f"best validation accuracy {_fmt(metrics['best_val_accuracy'])} (95% CI {_fmt(ci[0])}-{_fmt(ci[1])}; "
            f"{metrics.get('val_episodes', '?')} episodes of shape {metrics.get('val_shape', '?')} "
            f"(way, shot, query) on {metrics.get('val_set', '?')}) at training episode "
            f"{metrics.get('best_episode', '?')}")


def model_card(model: FewShotClassifier, info: CheckpointInfo, spec: dict[str, Any], images: ImageSet,
               source: dict[str, Any], seed: int, n_shot: int, support_counts: dict[str, int],
               result: EvaluationResult, bundle_correct: np.ndarray, parity: Parity,
               guard: DomainGuard | None) -> dict[str, Any]:
    """The card as JSON-ready values (see the module docstring)."""
    correct = np.asarray(bundle_correct, dtype=np.float64)
    this_support = proportion_interval([correct.sum()], [len(correct)], ci="wilson").to_dict()
    episodes = result.to_dict()
    return {
        "model": {"method": info.model, "params": info.model_params, "backbone": info.backbone,
                  "backbone_params": info.backbone_params, "in_channels": info.in_channels,
                  "image_size": list(info.image_size), "fingerprint": model.fingerprint(),
                  "checkpoint_created": info.created, "fsl_xai_version": info.version,
                  "scoring_rule": spec["rule"]["description"], "exporter": spec["exporter"]},
        "training": {"dataset": info.dataset, "data_fingerprint": info.data_fingerprint,
                     "classes": list(info.classes), "class_split": info.class_split,
                     "model_selection": info.val_metrics, "progress": info.progress, "extra": info.extra},
        "classes": spec["classes"],
        "support_set": {"dataset": images.name, **source, "data_fingerprint": images.fingerprint(), "seed": seed,
                        "n_shot": n_shot, "images_per_class": support_counts},
        "validation": {
            "episodes": {"accuracy": episodes["accuracy"], "ci95": episodes["ci95"],
                         "n_episodes": episodes["episodes"], "n_queries": episodes["n_queries"],
                         "n_way": episodes["n_way"], "n_shot": episodes["n_shot"], "n_query": episodes["n_query"],
                         "seed": seed, "interval": "mean of the per-episode accuracies, normal 95% interval over "
                                                  "episodes (fsl_xai.evaluation.evaluate)"},
            "this_support_set": {**this_support, "what": "the bundle itself (onnxruntime) on the images of its "
                                                         "classes outside its support set, same data; Wilson "
                                                         "interval over images, given this support set"},
        },
        "domain_guard": ({"available": True, **guard.to_dict(), "note": "the threshold is recorded here; the "
                          "bundle's predictor does not score out-of-distribution images"}
                         if guard is not None else
                         {"available": False, "note": "no domain guard was given; fit one with `fsl-xai guard "
                                                      "--save-guard GUARD.json` and pass --guard GUARD.json"}),
        "input": spec["transform"],
        "parity": parity.to_dict(),
        "limitations": list(LIMITATIONS),
    }


def model_card_markdown(card: dict[str, Any]) -> str:
    """The card as a short Markdown page."""
    m, t, s = card["model"], card["training"], card["support_set"]
    ep, own = card["validation"]["episodes"], card["validation"]["this_support_set"]
    g, x, p = card["domain_guard"], card["input"], card["parity"]
    lo, hi = ep["ci95"]
    olo, ohi = own["ci95"]
    where = ", ".join(f"{k} {v}" for k, v in s.items() if k in ("split", "file"))
    lines = [
        f"# Model card: {m['method']} ({m['backbone']}), {len(card['classes'])} classes",
        "",
        f"Classes: {', '.join(card['classes'])}.",
        "",
        "## Model",
        f"- Method: {m['method']}{_options(m['params'])}; backbone {m['backbone']}{_options(m['backbone_params'])}; "
        f"fingerprint {m['fingerprint']}.",
        f"- Scoring: {m['scoring_rule']}.",
        f"- Exported with {m['exporter']}; onnxruntime's embeddings match torch's within {p['max_diff']:.2g} "
        f"and the class scores within {p['max_score_rel_diff']:.2g} of their size (allowed {p['tolerance']:g}) "
        f"on {p['n_images']} real images.",
        "",
        "## Training data",
        f"- Trained on {t['dataset'] or 'unknown'} (fingerprint {t['data_fingerprint'] or 'unknown'}), "
        f"classes: {', '.join(t['classes']) or 'unknown'}.",
        f"- Model selection: {_selection(t['model_selection'])}.",
        "",
        "## Support set",
        f"- {s['n_shot']} images per class drawn with seed {s['seed']} from {s['dataset']}"
        f"{' (' + where + ')' if where else ''}, fingerprint {s['data_fingerprint']}.",
        "",
        "## Validation",
        f"- Few-shot episodes: accuracy {_fmt(ep['accuracy'])} (95% CI {_fmt(lo)}-{_fmt(hi)}; "
        f"n = {ep['n_episodes']} episodes, {ep['n_way']}-way {ep['n_shot']}-shot, {ep['n_queries']} queries).",
        f"- This bundle's support set: accuracy {_fmt(own['estimate'])} (95% CI {_fmt(olo)}-{_fmt(ohi)}; "
        f"n = {own['n']} images outside the support set, same data).",
        "",
        "## Domain guard",
        (f"- Threshold {g['threshold']:.4f} ({g['method']}, k = {g['k']}, the {g['quantile']:.0%} quantile of "
         f"{g['n_calibration']} held-in images). {g['note'].capitalize()}." if g["available"]
         else f"- None: {g['note']}."),
        "",
        "## Input",
        f"- {x['layout']} {x['dtype']}, {x['channels']} channel(s), {x['height']}x{x['width']} pixels, "
        f"{x['scale']}, {x['normalisation']}; colour {x['colour']}; resize {x['resize']}.",
        "",
        "## Limitations",
        *[f"- {text}" for text in card["limitations"]],
        "",
    ]
    return "\n".join(lines)
