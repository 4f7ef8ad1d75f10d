"""The job layer sits below the scores (issue 12, DESIGN.md "Arrows that must never exist").

Reference: the import statements themselves (read with ``ast``, also those inside
functions) and, at run time, ``sys.modules`` of a fresh interpreter.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "atomscore"
JOBS = sorted((PACKAGE / "jobs").glob("*.py"))
#: modules of the scores: the contract and every score package
SCORE_MODULES = ("atomscore.score", "atomscore.ltau", "atomscore.quests", "atomscore.fim", "atomscore.catalog",
                 "atomscore.descriptors", "atomscore.demo", "atomscore.ltau.md", "atomscore.quests.selection")


def imported_names(path):
    """Every module named by an import statement in ``path`` (``from a import b`` gives a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else "atomscore.jobs." + node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_no_job_module_imports_a_score(path):
    bad = sorted(n for n in imported_names(path) if n.startswith(SCORE_MODULES))
    assert not bad, f"{path.name} imports {bad}"


def test_workflow_does_not_import_the_scheduler():
    names = imported_names(PACKAGE / "jobs" / "workflow.py")
    assert "atomscore.jobs.scheduler" not in names and "scheduler" not in names


def test_at_run_time_the_jobs_load_without_scores_or_scheduler():
    code = ("import sys, atomscore.jobs, atomscore.jobs.folder, atomscore.jobs.workflow, atomscore.jobs.runner, "
            "atomscore.jobs.calls, atomscore.cli.jobs; "
            "print(sorted(m for m in sys.modules if m.startswith(('atomscore.score', 'atomscore.jobs.scheduler', "
            "'atomscore.ltau', 'atomscore.quests', 'atomscore.fim'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_the_old_import_paths_still_work():
    from atomscore import make_workflow as public
    from atomscore.jobs import WORKFLOW_TYPES, make_workflow
    import atomscore.jobs.workflow as workflow
    from atomscore.score import to_jsonable
    from atomscore.io import to_jsonable as io_to_jsonable

    assert public is make_workflow and "SLURM" in WORKFLOW_TYPES
    # issue 20: the compatibility __getattr__ that reached up to the scheduler is gone
    assert not hasattr(workflow, "make_workflow")
    assert to_jsonable is io_to_jsonable


def test_one_state_enum_and_no_state_literals_in_the_job_layer():
    """States are JobState members everywhere; the strings appear once, in JobState itself."""
    from atomscore.jobs.folder import JobState

    for path in JOBS:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == "JobState":
                continue
            if isinstance(node, ast.keyword) and node.arg == "state" and isinstance(node.value, ast.Constant):
                raise AssertionError(f"{path.name}:{node.value.lineno}: state={node.value.value!r} literal")
    assert [s.value for s in JobState] == ["pending", "running", "done", "failed", "cancelled"]
