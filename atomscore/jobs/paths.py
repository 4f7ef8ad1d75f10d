"""Names, not strings: the kinds of score (with their results file) and every file of a job.

:class:`ScoreKind` lives here, below the scores, so that ``atomscore.score`` and the job
layer share one type without the job layer importing a score. :class:`JobPaths` names each
file of a job folder (as submitit's ``JobPaths``), from the one table of their names, :data:`FILES`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

#: the one table of the names of the files of a job folder (and of a run folder)
FILES = SimpleNamespace(
    job="job.json", status="status.json", args="args", input_xyz="input.xyz", input_json="input.json",
    results_xyz="score_results.xyz", results_json="score_results.json", call_result="result.json",
    call_result_arrays="result", stdout="stdout.log", stderr="stderr.log", scheduler="scheduler.json",
    cleaned="CLEANED", lock=".status.lock", run="run.json",
)


class ScoreKind(str, enum.Enum):
    """The four kinds of score, each with where its results are stored.

    A ``str`` enum: ``ScoreKind.ATOM == 'atom'``, and ``job.json`` keeps the plain value.
    """

    ATOM = "atom"
    CONFIGURATION = "configuration"
    DATASET = "dataset"
    MODEL = "model"

    @property
    def on_configurations(self) -> bool:
        """True when results are attached to the configurations (extxyz), else one JSON dict."""
        return self in (ScoreKind.ATOM, ScoreKind.CONFIGURATION)

    @property
    def results_file(self) -> str:
        """``score_results.xyz`` or ``score_results.json``."""
        return FILES.results_xyz if self.on_configurations else FILES.results_json

    @property
    def input_file(self) -> str:
        """``input.xyz``, or ``input.json`` for the items of a model score."""
        return FILES.input_json if self is ScoreKind.MODEL else FILES.input_xyz

    def __str__(self):
        return self.value


@dataclass(frozen=True)
class JobPaths:
    """Every file of the job folder ``folder`` (``root/<group>/<path_type>/<run>/<NNNNN>``).

    Parameters
    ----------
    folder : path
        The job folder.
    root : path, optional
        The workflow root the job was written under, where nested jobs of a running job go;
        default: read from the folder's place in the layout (four levels up).
    """

    folder: Path
    root: Path | None = None

    def __post_init__(self):
        folder = Path(self.folder)
        object.__setattr__(self, "folder", folder)
        if self.root is None:
            parents = folder.parents
            object.__setattr__(self, "root", parents[3] if len(parents) > 3 else folder.parent)
        else:
            object.__setattr__(self, "root", Path(self.root))

    @property
    def run(self) -> Path:
        """The run folder holding this job (with ``run.json``)."""
        return self.folder.parent

    job = property(lambda self: self.folder / FILES.job, doc="``job.json``: what the runner runs")
    status = property(lambda self: self.folder / FILES.status, doc="``status.json``: state, exit code, times")
    args = property(lambda self: self.folder / FILES.args, doc="``args/``: the ``.npy`` array arguments")
    input_xyz = property(lambda self: self.folder / FILES.input_xyz, doc="``input.xyz``: the configurations")
    input_json = property(lambda self: self.folder / FILES.input_json, doc="``input.json``: a model score's items")
    results_xyz = property(lambda self: self.folder / FILES.results_xyz, doc="``score_results.xyz``")
    results_json = property(lambda self: self.folder / FILES.results_json, doc="``score_results.json``")
    call_result = property(lambda self: self.folder / FILES.call_result, doc="``result.json`` of a job call")
    call_result_arrays = property(lambda self: self.folder / FILES.call_result_arrays,
                                  doc="``result/``: a job call's result arrays")
    stdout = property(lambda self: self.folder / FILES.stdout, doc="``stdout.log``")
    stderr = property(lambda self: self.folder / FILES.stderr, doc="``stderr.log``")
    scheduler = property(lambda self: self.folder / FILES.scheduler, doc="``scheduler.json``: scheduler ids")
    cleaned = property(lambda self: self.folder / FILES.cleaned, doc="``CLEANED``: marks a cleaned folder")
    lock = property(lambda self: self.folder / FILES.lock, doc="``.status.lock``")

    def results(self, kind) -> Path:
        """The results file of a score of ``kind`` (a :class:`ScoreKind` or its value)."""
        return self.folder / ScoreKind(kind).results_file

    @property
    def existing_results(self) -> list[str]:
        """Names of the results files present (a score's or a call's)."""
        return [p.name for p in (self.results_xyz, self.results_json, self.call_result) if p.exists()]
