"""atomscore.jobs: job folders, the runner, and the workflows that run them.

This package sits below the scores: nothing here imports ``atomscore.score`` or a score
package (the runner re-creates a score by the name recorded in its folder). The workflow
factory lives here, above :mod:`~atomscore.jobs.workflow` and
:mod:`~atomscore.jobs.scheduler`, so that neither of the two needs the other.
"""

from __future__ import annotations

from atomscore.errors import InputError

#: the ``workflow_type`` values of the seed's dict form
WORKFLOW_TYPES = ("LOCAL", "SLURM", "LSF", "PBS", "FLUX")


def make_workflow(spec=None):
    """A workflow from ``None`` (LocalWorkflow), a Workflow, or the seed's dict form.

    Parameters
    ----------
    spec : None, Workflow or dict
        ``{'workflow_type': 'LOCAL'|'SLURM'|'LSF'|'PBS'|'FLUX', 'workflow_args': {...}}``.
    """
    from atomscore.jobs.workflow import LocalWorkflow, Workflow

    if spec is None:
        return LocalWorkflow()
    if isinstance(spec, Workflow):
        return spec
    if not isinstance(spec, dict) or "workflow_type" not in spec:
        raise InputError(f"workflow: expected a Workflow or a dict with 'workflow_type' and 'workflow_args', got {spec!r:.100}")
    kind = str(spec["workflow_type"]).upper()
    args = dict(spec.get("workflow_args") or {})
    if kind not in WORKFLOW_TYPES:
        raise InputError(f"workflow_type: unknown {spec['workflow_type']!r}; expected one of: {', '.join(WORKFLOW_TYPES)}")
    try:
        if kind == "LOCAL":
            return LocalWorkflow(**args)
        from atomscore.jobs import scheduler

        if kind == "SLURM":
            return scheduler.SlurmWorkflow(**args)
        return scheduler.PSIJWorkflow(executor=kind.lower(), **args)
    except TypeError as exc:
        raise InputError(f"workflow_args for {kind}: {exc}") from None
