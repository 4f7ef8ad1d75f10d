"""Run registered module-level functions as job folders through a workflow.

Used where a score needs many independent evaluations (e.g. a target property at every
perturbed parameter set): each call becomes a folder ``root/calls/<path_type>/<run>/<NNNNN>``
with ``job.json`` (the function as ``module:QualName`` and its keyword arguments, arrays as
``.npy``), is run by ``python -m atomscore.job``, and leaves ``result.json``. Only functions
decorated with :func:`job_call` may be run this way: a job folder never makes the runner
call an arbitrary function.
"""

from __future__ import annotations

from pathlib import Path

from atomscore.errors import InputError
from atomscore.jobs.folder import (FILES, FORMAT_VERSION, JobFiles, check_path_type, class_reference, clean_folder,
                                   decode_args, encode_args, is_job_call, read_json, write_run)


def job_call(func):
    """Register ``func`` (a module-level function) as one the job runner may call."""
    func.__atomscore_job_call__ = True
    return func


def map_calls(func, list_of_kwargs, workflow=None, path_type="calls", job_details=None, progress=False,
              cleanup=True):
    """Call ``func(**kwargs)`` for every ``kwargs`` in jobs of ``workflow``; return the results.

    Parameters
    ----------
    func : callable
        A function defined at module level and decorated with :func:`job_call`.
    list_of_kwargs : list of dict
        Keyword arguments of each call: JSON data and numpy arrays.
    workflow : Workflow or dict, optional
        Default: a :class:`~atomscore.jobs.workflow.LocalWorkflow`.
    path_type : str
        Folder name of this group of calls under ``root/calls/``.
    job_details : dict, optional
        Passed to the workflow.
    progress : bool
        Show a progress bar while waiting.
    cleanup : bool
        Clean the calls' folders (argument files removed, folder marked so that it is not
        run again) once their results are read.

    Returns
    -------
    list
        ``func``'s return values (JSON data and arrays), in the order of ``list_of_kwargs``.

    Raises
    ------
    JobFailedError
        If any call failed; the message names each with the tail of its stderr.
    """
    from atomscore.jobs import make_workflow

    check_path_type(path_type)
    if not isinstance(list_of_kwargs, (list, tuple)) or not all(isinstance(k, dict) for k in list_of_kwargs):
        raise InputError("map_calls: list_of_kwargs: expected a list of dicts")
    if not is_job_call(func):
        raise InputError(f"map_calls: {getattr(func, '__qualname__', func)!r} is not registered as a job call; "
                         "decorate it with atomscore.jobs.calls.job_call")
    reference = class_reference(func)
    encoded = [encode_args(kwargs, "kwargs", f"arguments of call {i} to {reference['target']}")
               for i, kwargs in enumerate(list_of_kwargs)]
    workflow = make_workflow(workflow)
    workflow.check_job_details(job_details)
    jobs = [JobFiles({"format_version": FORMAT_VERSION, "kind": "call", "function": reference, "kwargs": data,
                      "cwd": str(Path.cwd())}, arrays=arrays) for data, arrays in encoded]
    folders = write_run(workflow.root / "calls" / path_type, jobs, {"function": reference, "path_type": path_type})
    calc_ids = workflow.submit_run(folders, job_details)
    workflow.block_until_completed(calc_ids, progress=progress)
    results = []
    for folder in folders:
        results.append(decode_args(read_json(folder / FILES.call_result), folder)["result"])
        if cleanup:
            clean_folder(folder)
    return results
