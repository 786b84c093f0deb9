"""Which model made a stored prediction.

The classify and sentiment ensembles name what their answers are made from in their config
(core.model_interfaces.WEIGHTS_FINGERPRINT). A job that stores their answers records the identity
Triton serves in ``served_models`` whenever it looks (each batch, and each tick or batch run
before it counts its backlog), stamps every prediction with it, and counts a prediction stamped
with another identity as pending: a new model re-predicts the catalog without anyone asking,
and an unchanged one never does.
"""

from __future__ import annotations

from core.model_interfaces import Endpoint
from workers.jobs.base import Deps

_RECORD = """
INSERT INTO served_models (job, identity) VALUES (%s, %s)
ON CONFLICT (job) DO UPDATE SET identity = EXCLUDED.identity, observed_at = now()
WHERE served_models.identity IS DISTINCT FROM EXCLUDED.identity
"""


def observe(deps: Deps, job: str, endpoint: Endpoint) -> str:
    """Ask Triton which model serves ``endpoint``, record it for ``job`` and return it."""
    identity = deps.triton.served_identity(endpoint)
    deps.conn.execute(_RECORD, (job, identity))
    return identity


def current(job: str) -> str:
    """SQL for the identity recorded for ``job``: a scalar subquery, evaluated once per statement
    (NULL before any worker has looked, which no stamp is distinct from but a real one)."""
    if not job.isidentifier():
        raise ValueError(f"job name {job!r} is not an identifier")
    return f"(SELECT identity FROM served_models WHERE job = '{job}')"
