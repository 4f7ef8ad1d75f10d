"""Where every public name lives, so that ``import atomscore`` stays cheap.

One table serves the lazy attributes of the package (``atomscore.LTAUForcesUQScore``)
and the score lookup by name (``"score_type": "LTAUForcesUQScore"`` in a job spec).
Heavy or optional dependencies (faiss, kimpy, cvxpy, PSI/J) are therefore imported
only when the name that needs them is first used.
"""

from __future__ import annotations

import importlib

#: public name -> module that defines it
PUBLIC_NAMES: dict[str, str] = {
    "ScoreQuantity": "atomscore.quantity",
    "InputError": "atomscore.errors",
    "JobFailedError": "atomscore.errors",
    "SolverError": "atomscore.errors",
    "PotentialError": "atomscore.errors",
    "SchedulerError": "atomscore.errors",
    "MissingExtraError": "atomscore.errors",
    "UncertaintyExceeded": "atomscore.errors",
    "ScoreBase": "atomscore.score",
    "AtomCenteredScore": "atomscore.score",
    "ConfigurationScore": "atomscore.score",
    "DatasetScore": "atomscore.score",
    "ModelScore": "atomscore.score",
    "ScoreResults": "atomscore.score",
    "ScoreArray": "atomscore.score",
    "ScoreFloat": "atomscore.score",
    "records_metadata": "atomscore.score",
    "Workflow": "atomscore.jobs.workflow",
    "LocalWorkflow": "atomscore.jobs.workflow",
    "make_workflow": "atomscore.jobs",
    "PSIJWorkflow": "atomscore.jobs.scheduler",
    "SlurmWorkflow": "atomscore.jobs.scheduler",
    "QUESTSDescriptor": "atomscore.quests.descriptor",
    "QUESTSEfficiencyScore": "atomscore.quests.score",
    "QUESTSDiversityScore": "atomscore.quests.score",
    "QUESTSDeltaEntropyScore": "atomscore.quests.score",
    "ReferenceSet": "atomscore.quests.reference",
    "LTAUForcesUQScore": "atomscore.ltau.score",
    "select": "atomscore.quests.selection",
    "Selection": "atomscore.quests.selection",
    "UncertaintyCalculator": "atomscore.ltau.md",
    "FlaggedFramesWriter": "atomscore.ltau.md",
    "KIMPotential": "atomscore.potentials.kim",
    "ElasticConstants": "atomscore.properties.elastic",
    "KIMRun": "atomscore.properties.kimrun",
    "FIMTrainingSetScore": "atomscore.fim.training_set",
    "FIMPropertyScore": "atomscore.fim.property",
    "FIMMatchingScore": "atomscore.fim.matching",
}

#: the score classes a job spec may name in ``score_type``
SCORE_TYPES: tuple[str, ...] = (
    "LTAUForcesUQScore",
    "QUESTSEfficiencyScore",
    "QUESTSDiversityScore",
    "QUESTSDeltaEntropyScore",
    "FIMTrainingSetScore",
    "FIMPropertyScore",
    "FIMMatchingScore",
)


def load_public(name: str):
    """Import and return the public object ``name`` (see :data:`PUBLIC_NAMES`)."""
    return getattr(importlib.import_module(PUBLIC_NAMES[name]), name)


def score_class(score_type: str):
    """Return the score class named ``score_type``: one of :data:`SCORE_TYPES`, or a user's
    own class as ``'module:ClassName'`` (the module importable from here).

    Raises
    ------
    InputError
        If ``score_type`` names no score class; the message lists the built-in ones.
    """
    from atomscore.errors import InputError

    if isinstance(score_type, str) and ":" in score_type:
        from atomscore.score import ScoreBase

        module, _, name = score_type.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise InputError(f"score_type {score_type!r}: cannot import it ({exc})") from None
        if not (isinstance(cls, type) and issubclass(cls, ScoreBase)):
            raise InputError(f"score_type {score_type!r}: not a score class (a subclass of atomscore.ScoreBase)")
        return cls
    if score_type not in SCORE_TYPES:
        raise InputError(
            f"unknown score_type {score_type!r}; expected one of: {', '.join(SCORE_TYPES)}, "
            "or 'module:ClassName' for your own score"
        )
    return load_public(score_type)
