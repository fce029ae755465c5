"""View 1: pick a dataset and a model; loads the cached default model or trains it with a visible progress bar."""

from __future__ import annotations

import html

import ipywidgets as w

from fsl_xai.data import list_datasets
from fsl_xai.models import list_models

from ._base import View
from .figures import rate_text


class DatasetModelPicker(View):
    title = "Dataset and model"

    def __init__(self, state, **kwargs):
        super().__init__(state, **kwargs)
        # what can be opened now: present here, downloadable, or built in
        names = [i.name for i in list_datasets()
                 if i.supported and (i.present or i.downloadable or i.kind == "builtin")]
        current = state.dataset_name if state.dataset_name in names else (names[0] if names else None)
        self.dataset = w.Dropdown(options=names, value=current, description="dataset",
                                  layout=w.Layout(width="260px"))
        models = list_models()
        self.model = w.Dropdown(options=models, value=state.model_name if state.model_name in models else models[0],
                                description="model", layout=w.Layout(width="220px"))
        style = {"description_width": "50px"}
        self.n_way = w.BoundedIntText(value=state.n_way, min=2, max=20, description="n-way", style=style,
                                      layout=w.Layout(width="120px"))
        self.n_shot = w.BoundedIntText(value=state.n_shot, min=1, max=50, description="n-shot", style=style,
                                       layout=w.Layout(width="120px"))
        self.n_query = w.BoundedIntText(value=state.n_query, min=1, max=50, description="n-query", style=style,
                                        layout=w.Layout(width="130px"))
        self.load_button = w.Button(description="load", icon="download", button_style="primary",
                                    tooltip="load the dataset and its cached model (trained on first use)")
        self.load_button.on_click(self.guard(lambda _: self.load()))
        self.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="160px", visibility="hidden"))
        self.output = w.Output(layout=w.Layout(max_height="120px", overflow="auto"))
        self.info = w.HTML()
        self.children = [w.HBox([self.dataset, self.model, self.n_way, self.n_shot, self.n_query, self.load_button,
                                 self.progress]), self.output, self.info, self.error_area]
        state.observe(self._on_model, names=["model", "model_info", "status", "episode_classes", "result"])
        self._on_model()

    def load(self) -> None:
        """Load the chosen dataset and model (training runs with tqdm progress bars shown in this view)."""
        self.progress.layout.visibility = "visible"
        self.progress.bar_style = "info"
        self.progress.value, self.progress.max = 0, 2
        self.output.clear_output()
        s = self.state
        s.n_way, s.n_shot, s.n_query = self.n_way.value, self.n_shot.value, self.n_query.value
        try:
            with self.output:
                # tqdm.auto inside an Output widget renders as a live ipywidgets progress bar
                self.state.load(self.dataset.value, self.model.value, progress=True)
            self.progress.value = 2
            self.progress.bar_style = "success"
        except Exception:
            self.progress.bar_style = "danger"
            raise
        finally:
            self.n_way.value = self.state.n_way

    def _on_model(self, change=None) -> None:
        s = self.state
        if s.model is None:
            self.info.value = "<i>no model loaded: choose a dataset and click load</i>"
            return
        info = s.model_info
        parts = [f"<b>{html.escape(s.dataset_name)}</b> · model <b>{html.escape(s.model_name)}</b> "
                 f"(fingerprint <code>{s.fingerprint}</code>)"]
        trained = getattr(info, "trained", True)
        if trained is False:
            note = getattr(info, "note", "") or "not trained"
            parts.append(f"<span style='color:#a00'>untrained model ({html.escape(note)})</span>")
        metrics = getattr(info, "val_metrics", None) or {}
        acc, ci = metrics.get("best_val_accuracy"), metrics.get("best_val_ci95")
        if acc is not None and ci:
            n = metrics.get("val_episodes", "?")
            parts.append(f"validation accuracy {100 * acc:.1f}% (95% CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f}%, "
                         f"n={n} episodes)")
        if s.episode_classes:
            parts.append("episodes drawn from the classes the model was not trained on: "
                         + ", ".join(html.escape(c) for c in s.episode_classes))
        if s.result is not None:
            parts.append("this episode: " + rate_text(int(s.result.correct[s.result.true >= 0].sum()), s.result.n))
        self.info.value = "<br>".join(parts)
