"""Transforms that change the number of parameters: a tabulated model's tables generated
from a few physical scale factors (P_φ ≪ P_θ), as the information-matching group does for
its EAM models. Used by the demo's tungsten step, examples/orchestrator_style.py and
tests/test_fim_transforms.py.
"""

from __future__ import annotations

import numpy as np

from atomscore.errors import import_extra

_transform = import_extra("information_matching.transform", "parameter transforms", "fim")

#: the three tables of an EAM_Dynamo model (KIM parameter names)
EAM_TABLES = ("embeddingData", "rPhiData", "densityData")


class TableScales(_transform.TransformBase):
    """θ: the tables, concatenated; φ: one scale factor per table.

    ``transform`` is each table's least-squares scale against its reference (exact on the
    tables ``inverse_transform`` generates). The reference tables are state, not
    ``jsonable_kwargs``: a job cannot rebuild this transform from its kwargs.

    Parameters
    ----------
    tables : list of array_like
        The reference tables (the model's values), in the order of ``parameters_optimize``.
    """

    def __init__(self, tables):
        super().__init__()
        self.tables = [np.asarray(t, dtype=float).copy() for t in tables]

    def transform(self, x):
        x = np.asarray(x, dtype=float)
        out, start = [], 0
        for t in self.tables:
            out.append(x[start:start + t.size] @ t / (t @ t))
            start += t.size
        return np.array(out)

    def inverse_transform(self, x):
        return np.concatenate([s * t for s, t in zip(np.asarray(x, dtype=float), self.tables)])


def eam_table_scales(potential, tables=EAM_TABLES):
    """The log-scale transform of a tabulated model's tables and its ``parameters_optimize``.

    Parameters
    ----------
    potential : KIMPotential
        The model; its current table values are the references (φ = 0 reproduces them).
    tables : sequence of str
        KIM parameter names of the tables (default the EAM_Dynamo ones).

    Returns
    -------
    transform : information_matching.transform.ComposedTransform
        ``TableScales`` then ``LogTransform``: φ_k = ln(scale of table k), dimensionless.
    parameters_optimize : dict
        Every extent of every table free at its current value.
    references : list of numpy.ndarray
        The tables.
    """
    references = [np.asarray(potential.get_parameter(name), dtype=float) for name in tables]
    transform = _transform.ComposedTransform([TableScales(references), _transform.LogTransform(np.ones(len(tables)))])
    return transform, {name: [["default"]] * t.size for name, t in zip(tables, references)}, references
