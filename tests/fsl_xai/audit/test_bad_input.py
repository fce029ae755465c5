"""Bad input stops an audit before any work, with one clear line (exit 2 from the command line)."""

from __future__ import annotations

import socket
from pathlib import Path

import pandas as pd
import pytest

from fsl_xai.audit import AuditError, run_audit
from fsl_xai.cli import EXIT_ERROR, main
from fsl_xai.errors import DataError, ModelError

from .common import small_spec


def _run(capsys: pytest.CaptureFixture, args: list[str]) -> tuple[int, str]:
    code = main(["audit", *args])
    return code, capsys.readouterr().err


def test_command_line_runs_in_process(checkpoint: Path, reference: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "audit"
    code = main(["audit", "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--n-shot", "1", "--n-query", "3",
                 "--episodes", "6", "--methods", "saliency,gradcam", "--by", "site", "--chunk-episodes", "2",
                 "--seed", "1", "--workers", "0", "--no-progress", "--out", str(out)])
    assert code == 0
    assert "3 chunk(s) computed, 0 already done" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(out / "queries.parquet"),
                                  pd.read_parquet(reference / "queries.parquet"))


@pytest.mark.parametrize(("extra", "message"), [
    (["--methods", "saliency,no_such_method"], "unknown attribution method 'no_such_method'; choose one of"),
    (["--methods", "saliency", "--by", "hospital"], "--by hospital: synthetic has no metadata column 'hospital'"),
    (["--methods", "saliency", "--by", "sample_id"], "--by sample_id identifies single images"),
    (["--methods", "saliency", "--scheduler", "127.0.0.1"], "is not a scheduler address; give one like tcp://"),
    (["--methods", "saliency", "--episodes", "0"], "episodes must be at least 1"),
])
def test_bad_input_is_one_line(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
                               message: str) -> None:
    # every check runs before a cluster would start
    args = ["--checkpoint", str(checkpoint), "--dataset", "synthetic", "--episodes", "2", "--no-progress",
            "--out", str(tmp_path / "audit"), *extra]
    code, err = _run(capsys, args)
    assert code == EXIT_ERROR
    assert err.startswith("fsl-xai audit: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "audit").exists()  # nothing written


def test_unreachable_scheduler(checkpoint: Path, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AuditError, match=rf"no Dask scheduler answered at tcp://127.0.0.1:{port} within 2 s"):
        run_audit(small_spec(checkpoint, episodes=1), tmp_path, scheduler=f"tcp://127.0.0.1:{port}", progress=False,
                  connect_timeout=2)


def test_library_errors_are_typed(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown attribution method"):
        run_audit(small_spec(checkpoint, methods=("nope",)), tmp_path, progress=False)
    with pytest.raises(DataError, match="exactly one of a dataset name"):
        run_audit(small_spec(checkpoint, data_file="x.npz"), tmp_path, progress=False)
    with pytest.raises(AuditError, match="workers must be 0"):
        run_audit(small_spec(checkpoint), tmp_path, workers=-1, progress=False)


def test_a_method_the_network_cannot_explain_is_refused_before_any_chunk(tmp_path: Path) -> None:
    """Guided Backprop on ResNet-12 (LeakyReLU) would be the plain gradient: said at once, nothing written."""
    import fsl_xai as F
    from fsl_xai.checkpoints import save_checkpoint

    resnet = save_checkpoint(tmp_path / "resnet.pt", F.make_model("protonet", F.make_backbone("resnet12", 1, 64)))
    with pytest.raises(AuditError, match=r"--methods: .*nn\.ReLU"):
        run_audit(small_spec(resnet, methods=("gradcam", "guided_backprop")), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
