"""``fsl-xai app``: the workbench app (notebooks/app_workbench.ipynb) served by Voila, which this
process owns (:mod:`fsl_xai.voila_process`): bound to 127.0.0.1 unless ``--host`` says otherwise,
a taken port is an error before anything starts, the address is printed once Voila accepts
connections there, and SIGTERM / SIGINT stop Voila and every kernel it started.

With ``--preheat N`` (default 1) Voila keeps N kernels that already ran the app: a page takes one
instead of waiting for a kernel to start and import torch, the data and the model. A used kernel
is replaced PREHEAT_REFILL_S later, not at once, so the replacement's start does not share the
cores with the page that just took a kernel while it loads and computes its first maps.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from ..voila_process import (
    ChildTracker,
    OutputRelay,
    ServeError,
    StopSignals,
    check_port_free,
    run_until_stopped,
    stop_children,
    template_path,
    url_host,
    voila_argv,
    voila_environment,
)

APP_NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "app_workbench.ipynb"
#: the notebook's own choice when FSL_XAI_APP_DATASET is not set (it falls back to the synthetic set)
APP_DATASET = "pbc-blood-64"
APP_DATASET_ENV = "FSL_XAI_APP_DATASET"
#: the model the app opens (the workbench's default)
APP_MODEL = "protonet"
DEFAULT_PORT = 8866
DEFAULT_PREHEAT = 1
MAX_PREHEAT = 20
#: seconds after a page took a preheated kernel before its replacement starts. A replacement costs
#: about 12 CPU seconds (a kernel start: torch, the data, the model, the app's first maps); a page
#: from the pool is ready in about 5 s (5 CPU seconds of the browser, 0.5 of the server). Measured
#: (load average 3-7): page -> ready 5.2 and 5.9 s with Voila's 1 s delay against 5.2 and 5.2 s
#: with 30 s; a reload 2 s after a load 6.1 s against 14.3 s (within the delay it starts its own
#: kernel, StartedPoolKernelManager; Voila's pool alone made it wait: 41 s). 10 s keeps the
#: replacement off the page's own load, even on a busy machine, and a reload after it finds a kernel
PREHEAT_REFILL_S = 10.0
COMMAND = "fsl-xai app"
#: a kernel whose page is gone is shut down after this long idle: Voila refuses the shutdown its page
#: sends on closing (no XSRF token in a beacon: voila-dashboards/voila#1458), so without this every
#: closed or reloaded page would leave its kernel (~480 MiB with the app's data and model) running
CULL_IDLE_S = 900.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``app`` command to the subparsers."""
    p = sub.add_parser("app", help="serve the workbench app in the browser (Voila), with the default model ready")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port to serve on (default {DEFAULT_PORT}); an error if it is taken")
    p.add_argument("--preheat", type=int, default=DEFAULT_PREHEAT, metavar="N",
                   help=f"keep N kernels that already ran the app, so a page opens without waiting for one to "
                        f"start (default {DEFAULT_PREHEAT}; 0: start a kernel per page); a used one is replaced "
                        f"{PREHEAT_REFILL_S:.0f} s later")
    p.add_argument("--dataset", help=f"the image set the app opens (default: ${APP_DATASET_ENV}, else {APP_DATASET} "
                                     "when present, else the built-in synthetic set)")
    p.set_defaults(func=cmd_app)


def app_dataset(requested: str | None) -> str:
    """The image set the app will open: ``requested`` (an error when it is not here), else the
    notebook's choice, which falls back to the synthetic set when it is not here."""
    from ..data.registry import list_datasets
    from ..errors import DatasetNotFoundError

    present = {i.name for i in list_datasets() if i.present and i.supported}
    if requested and requested not in present:
        raise DatasetNotFoundError(f"--dataset {requested} is not on this machine (`fsl-xai datasets` lists those "
                                   "that are; set FSL_XAI_DATA_DIR to the folder that holds it)")
    wanted = requested or os.environ.get(APP_DATASET_ENV) or APP_DATASET
    return wanted if wanted in present else "synthetic"


def app_voila_argv(notebook: Path, host: str, port: int, preheat: int) -> list[str]:
    """Voila as the app runs it (``voila_argv``); with ``preheat``, a page takes a pooled kernel only
    once it has started (``StartedPoolKernelManager``). ``notebook`` may be a folder (the
    benchmark's): then each notebook in it has a pool of its own."""
    pool_counts_started = ["--VoilaConfiguration.multi_kernel_manager_class="
                           "fsl_xai.voila_process.StartedPoolKernelManager"] if preheat else []
    return [*voila_argv(notebook, host, port, preheat, PREHEAT_REFILL_S, CULL_IDLE_S), *pool_counts_started]


def check_preheat(preheat: int) -> None:
    """Raise ServeError unless ``preheat`` is a whole number from 0 to MAX_PREHEAT."""
    if isinstance(preheat, bool) or not isinstance(preheat, int) or not 0 <= preheat <= MAX_PREHEAT:
        raise ServeError(f"--preheat must be a whole number from 0 to {MAX_PREHEAT}, got {preheat!r}; e.g. --preheat 1 "
                         "(each kernel holds the app's data and model)")


def serve_app(notebook: Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT, preheat: int = DEFAULT_PREHEAT,
              env: dict[str, str] | None = None) -> int:
    """Serve ``notebook`` with Voila until Voila exits or SIGTERM / SIGINT arrives; then stop Voila
    and every kernel it started. Returns the exit code (0 after SIGTERM, 130 after SIGINT, Voila's
    own code if it stopped by itself).

    Args:
        preheat: kernels kept ready that already ran the notebook (Voila's preheat pool); 0: none.
        env: variables added to the kernels' environment.

    Raises:
        ServeError: Voila is not installed, the notebook or the offline template is missing,
            ``preheat`` is not a whole number from 0 to MAX_PREHEAT, the port is taken or cannot be used,
            or Voila did not start serving.
    """
    check_preheat(preheat)
    if importlib.util.find_spec("voila") is None:
        raise ServeError("Voila is not installed; install the user-interface extra: pip install 'fsl-xai[ui]'")
    if not notebook.is_file():
        raise ServeError(f"the app notebook {notebook} is missing; run fsl-xai from its source folder (a git clone)")
    share = template_path(notebook)
    check_port_free(host, port, COMMAND)

    def announce() -> None:
        print(f"serving the workbench app on http://{url_host(host)}:{port}/ ; stop with Ctrl-C", flush=True)

    with StopSignals() as stops:
        process = subprocess.Popen(app_voila_argv(notebook, host, port, preheat),
                                   env=voila_environment(share, **(env or {})), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        relay = OutputRelay(process.stdout)
        tracker = ChildTracker(process.pid)
        try:
            run_until_stopped(process, tracker, stops, (host, port), f"{host}:{port}", announce)
        finally:
            if stops.received:
                relay.mute()
            stop_children(process, tracker, hurry=stops.hurry)
            relay.join(timeout=5)
    if stops.received:
        print("stopped the workbench app and its kernels", file=sys.stderr, flush=True)
        return stops.exit_code
    return process.returncode


def cmd_app(args: argparse.Namespace) -> int:
    from .lab import prepare

    # the cheap checks first: a taken port is an error before any model is trained
    check_preheat(args.preheat)
    check_port_free(args.host, args.port, COMMAND)
    dataset = app_dataset(args.dataset)
    prepare([dataset], APP_MODEL)
    return serve_app(APP_NOTEBOOK, args.host, args.port, args.preheat,
                     env={APP_DATASET_ENV: dataset} if args.dataset else None)
