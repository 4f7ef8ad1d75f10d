"""Run module-level functions as job folders through a workflow.

Used where a score needs many independent evaluations (e.g. a target property at every
perturbed parameter set): each call becomes a folder ``root/calls/<path_type>/<NNNNN>``
with ``job.json`` (the function as ``module:QualName`` and its keyword arguments, arrays as
``.npy``), is run by ``python -m atomscore.job``, and leaves ``result.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from atomscore.errors import InputError
from atomscore.jobs.folder import (ARGS_DIR, FORMAT_VERSION, check_path_type, class_reference, decode_args,
                                   encode_args, finish_job_folder, new_numbered_folder, remove_args, save_arrays)
from atomscore.jobs.runner import RESULT_FILE
from atomscore.jobs.workflow import make_workflow


def map_calls(func, list_of_kwargs, workflow=None, path_type="calls", job_details=None, progress=False,
              cleanup=True):
    """Call ``func(**kwargs)`` for every ``kwargs`` in jobs of ``workflow``; return the results.

    Parameters
    ----------
    func : callable
        A function defined at module level (a job imports it by name).
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
        Remove the calls' argument files once their results are read.

    Returns
    -------
    list
        ``func``'s return values (JSON data and arrays), in the order of ``list_of_kwargs``.

    Raises
    ------
    JobFailedError
        If any call failed; the message names each with the tail of its stderr.
    """
    check_path_type(path_type)
    if not isinstance(list_of_kwargs, (list, tuple)) or not all(isinstance(k, dict) for k in list_of_kwargs):
        raise InputError("map_calls: list_of_kwargs: expected a list of dicts")
    reference = class_reference(func)
    encoded = [encode_args(kwargs, "kwargs", f"arguments of call {i} to {reference['target']}")
               for i, kwargs in enumerate(list_of_kwargs)]
    workflow = make_workflow(workflow)
    workflow.check_job_details(job_details)
    base = workflow.root / "calls" / path_type
    folders = []
    for data, arrays in encoded:
        folder = new_numbered_folder(base)
        save_arrays(folder / ARGS_DIR, arrays)
        finish_job_folder(folder, {"format_version": FORMAT_VERSION, "kind": "call", "function": reference,
                                   "kwargs": data, "cwd": str(Path.cwd())})
        folders.append(folder)
    calc_ids = [workflow.submit(folder, job_details) for folder in folders]
    workflow.block_until_completed(calc_ids, progress=progress)
    results = []
    for folder in folders:
        results.append(decode_args(json.loads((folder / RESULT_FILE).read_text()), folder)["result"])
        if cleanup:
            remove_args(folder)
    return results
