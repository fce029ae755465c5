"""Audits at scale: every query of a split, with its attribution maps, quality checks and subgroup
gaps, computed in chunks of episodes in-process or on Dask distributed, into a folder
(format ``fsl-xai-audit/1``, laid out in :mod:`fsl_xai.audit.store`) that reports and the workbench read.

- :class:`AuditSpec`: what to compute; :func:`run_audit`: compute it into a folder (resumable).
- :func:`read_maps`: the maps of one method of an audit folder; :func:`local_client`: the
  LocalCluster the audit starts, for callers that run several audits on one.

Dask is needed only for a cluster (``workers >= 1`` or a scheduler address): the ``audit`` extra.
"""

from .chunks import QUALITY_COLUMNS
from .runner import AuditResult, local_client, run_audit
from .spec import DEFAULT_CHUNK_EPISODES, FORMAT, AuditError, AuditSpec
from .store import read_maps

__all__ = ["DEFAULT_CHUNK_EPISODES", "FORMAT", "QUALITY_COLUMNS", "AuditError", "AuditResult", "AuditSpec",
           "local_client", "read_maps", "run_audit"]
