"""KIMRun: OpenKIM tests the user brings, run without the KIM pipeline, as a target property.

An OpenKIM (legacy pipeline) test is a folder ``<name>__TE_<12 digits>_<3 digits>`` holding
``pipeline.stdin.tpl`` (a Jinja template with ``@< >@`` delimiters), ``runner`` and,
optionally, ``dependencies.edn`` (tests whose results it queries); a test driver
``<name>__TD_...`` holds a ``runner`` that reads its input on stdin and writes
``output/results.edn``. We do what the pipeline does for one test-model pair:

1. run the dependencies first (recursively, each once);
2. render the template: ``MODELNAME``, ``TESTNAME``, ``path("<item>")`` (a driver's runner),
   ``query({...})`` and ``get_test_result(...)`` over the results of the tests already run,
   ``convert(value, from_unit, to_unit)``;
3. run the runner in a private copy of the test folder with the rendered text on stdin. A
   template whose first line renders to a driver's runner (the standard test wrapper reads
   that line and runs the driver on the rest) runs that driver's runner directly; a runner
   with a Python shebang runs under ``python_executable`` when one is given (tests often need
   old numpy/scipy/ASE), else as an executable;
4. read ``output/results.edn`` with ``kim-edn`` and pick the keys and units asked for, the
   Orchestrator's ``get_test_result_args`` form.

The model is the potential's installed model when its parameters are the installed ones,
else its live parameters written as a parameterized model (kimpy's
``write_parameterized_model``) and installed into a collection private to this property's
work folder (:mod:`atomscore.potentials.portable`); a model built from ``param_files`` is
used from its own collection. The user's test folders are never written.

Units of the picked values are those named in ``units`` (KIM's unit names, converted with
pint); the FIM property vector is every picked value flattened, in order.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from atomscore.errors import InputError, PotentialError, import_extra
from atomscore.validation import check_executable_allowed, check_positive

#: an OpenKIM item folder: name, type (TE test, TD test driver), 12-digit number, version
ITEM_RE = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_]*?)__(?P<type>TE|TD)_(?P<num>\d{12})_(?P<ver>\d{3})$")
#: a reference to an item: extended id or short id, with or without version
REF_RE = re.compile(r"^(?:(?P<name>[A-Za-z][A-Za-z0-9_]*?)__)?(?P<type>TE|TD)_(?P<num>\d{12})(?:_(?P<ver>\d{3}))?$")
#: the query operators our local ``query()`` understands
QUERY_OPERATORS = ("$regex", "$options", "$in", "$eq", "$ne", "$exists")
#: seconds one test may run unless ``timeout`` is given
DEFAULT_TIMEOUT = 3600.0
#: keys of one ``get_test_result_args`` entry
RESULT_ARGS = ("test", "prop", "keys", "units")


# ---------------------------------------------------------------------- units
_UREG = None


def convert(value, from_unit, to_unit):
    """Convert ``value`` (number or nested list) from one KIM unit name to another (pint).

    ``None`` for both units returns the value as it is.
    """
    global _UREG
    if from_unit is None and to_unit is None:
        return value
    if from_unit is None or to_unit is None:
        raise InputError(f"units: cannot convert between {from_unit!r} and {to_unit!r} (one has no unit)")
    if _UREG is None:
        pint = import_extra("pint", "KIMRun unit conversion", "kim")
        _UREG = pint.UnitRegistry()
    try:
        q = _UREG.Quantity(np.asarray(value, dtype=float), _unit(from_unit))
        out = q.to(_unit(to_unit)).magnitude
    except Exception as exc:  # pint raises several error types for unknown or incompatible units
        raise InputError(f"units: cannot convert {from_unit!r} to {to_unit!r} ({exc})") from None
    return float(out) if np.ndim(out) == 0 else out.tolist()


def _unit(name):
    return str(name).replace("^", "**")


def _si_unit(unit):
    if _UREG is None:
        convert(1.0, unit, unit)
    try:
        return _UREG.Quantity(1.0, _unit(unit)).to_base_units()
    except Exception as exc:
        raise InputError(f"units: unknown unit {unit!r} ({exc})") from None


# ---------------------------------------------------------------------- items
class _Item:
    __slots__ = ("path", "name", "type", "num", "ver", "ext_id")

    def __init__(self, path, match):
        self.path = Path(path)
        self.name, self.type, self.num = match["name"], match["type"], match["num"]
        self.ver = int(match["ver"])
        self.ext_id = self.path.name


def _scan(test_dirs):
    """``{extended id: _Item}`` of every TE_/TD_ folder in (or given as) ``test_dirs``."""
    if isinstance(test_dirs, (str, os.PathLike)):
        test_dirs = [test_dirs]
    if not isinstance(test_dirs, (list, tuple)) or not test_dirs:
        raise InputError(f"test_dirs: expected a list of folders holding OpenKIM test (TE_) and test "
                         f"driver (TD_) folders, got {test_dirs!r}")
    items = {}
    for i, d in enumerate(test_dirs):
        if not isinstance(d, (str, os.PathLike)):
            raise InputError(f"test_dirs[{i}]: expected a folder path, got {d!r}")
        d = Path(d)
        if not d.is_dir():
            raise InputError(f"test_dirs[{i}]: no such folder: {str(d)!r}")
        m = ITEM_RE.match(d.name)
        candidates = [d] if m else sorted(p for p in d.iterdir() if p.is_dir())
        for p in candidates:
            m = ITEM_RE.match(p.name)
            if not m:
                continue
            if p.name in items and items[p.name].path.resolve() != p.resolve():
                raise InputError(f"test_dirs: {p.name} is in two folders: {items[p.name].path} and {p}")
            items[p.name] = _Item(p, m)
    if not any(it.type == "TE" for it in items.values()):
        raise InputError(f"test_dirs: no OpenKIM test folder (<name>__TE_<12 digits>_<3 digits>) in "
                         f"{[str(d) for d in test_dirs]}")
    return items


def _resolve(ref, items, where):
    """The item a reference names (extended/short id, version optional: the newest)."""
    m = REF_RE.match(ref.strip()) if isinstance(ref, str) else None
    if not m:
        raise InputError(f"{where}: expected an OpenKIM item id like Name__TE_012345678901_000 or "
                         f"TE_012345678901, got {ref!r}")
    found = [it for it in items.values() if it.type == m["type"] and it.num == m["num"]
             and (m["name"] is None or it.name == m["name"]) and (m["ver"] is None or it.ver == int(m["ver"]))]
    if not found:
        have = sorted(items)
        raise InputError(f"{where}: {ref!r} is not among the items in test_dirs ({', '.join(have)})")
    return max(found, key=lambda it: it.ver)


def _load_edn(path, where):
    kim_edn = import_extra("kim_edn", "KIMRun", "kim")
    try:
        return kim_edn.load(str(path))
    except Exception as exc:  # kim_edn raises its own decode errors
        raise PotentialError(f"{where}: cannot read {path} as EDN ({exc})") from None


def _dependencies(item, items):
    path = item.path / "dependencies.edn"
    if not path.is_file():
        return []
    deps = _load_edn(path, item.ext_id)
    if isinstance(deps, str):
        deps = [deps]
    if not isinstance(deps, list):
        raise InputError(f"{item.ext_id}/dependencies.edn: expected a list of test ids, got {deps!r}")
    return [_resolve(d, items, f"{item.ext_id}/dependencies.edn") for d in deps]


def run_order(tests, items):
    """Tests in an order that runs every dependency before its dependents (each once)."""
    order, state = [], {}

    def visit(it, chain):
        if state.get(it.ext_id) == "done":
            return
        if state.get(it.ext_id) == "active":
            raise InputError("dependencies.edn: a dependency cycle: " + " -> ".join(chain + [it.ext_id]))
        if it.type != "TE":
            raise InputError(f"dependencies.edn of {chain[-1] if chain else '?'}: {it.ext_id} is not a test")
        state[it.ext_id] = "active"
        for dep in _dependencies(it, items):
            visit(dep, chain + [it.ext_id])
        state[it.ext_id] = "done"
        order.append(it)

    for t in tests:
        visit(t, [])
    return order


# ---------------------------------------------------------------------- results and queries
def _documents(instances, test, model):
    """Result instances as query documents: ``meta`` (runner, subject) and SI values added."""
    docs = []
    for inst in instances:
        doc = copy.deepcopy(inst)
        doc["meta"] = {"runner": {"kimcode": test.ext_id, "_id": test.ext_id, "shortcode": f"TE_{test.num}"},
                       "subject": {"kimcode": model, "_id": model}}
        for key, val in inst.items():
            if isinstance(val, dict) and "source-value" in val:
                unit = val.get("source-unit")
                if unit is None:
                    doc[key]["si-value"] = val["source-value"]
                else:
                    si = _si_unit(unit)
                    doc[key]["si-value"] = convert(val["source-value"], unit, str(si.units))
                    doc[key]["si-unit"] = str(si.units)
        docs.append(doc)
    return docs


def _get(doc, dotted):
    cur = doc
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return _MISSING
    return cur


_MISSING = object()


def _matches(value, cond, key):
    if isinstance(cond, dict) and any(k.startswith("$") for k in cond):
        bad = [k for k in cond if k not in QUERY_OPERATORS]
        if bad:
            raise InputError(f"query: operator {bad[0]!r} (on {key!r}) is not supported by KIMRun's local query; "
                             f"supported: {', '.join(QUERY_OPERATORS)}")
        ok = True
        if "$exists" in cond:
            ok &= (value is not _MISSING) == bool(cond["$exists"])
        if "$regex" in cond:
            flags = re.IGNORECASE if "i" in str(cond.get("$options", "")) else 0
            vals = value if isinstance(value, list) else [value]
            ok &= any(isinstance(v, str) and re.search(cond["$regex"], v, flags) for v in vals)
        if "$in" in cond:
            vals = value if isinstance(value, list) else [value]
            ok &= any(v in cond["$in"] for v in vals)
        if "$eq" in cond:
            ok &= _matches(value, cond["$eq"], key)
        if "$ne" in cond:
            ok &= not _matches(value, cond["$ne"], key)
        return ok
    if value is _MISSING:
        return False
    if isinstance(value, list) and not isinstance(cond, list):
        return cond in value
    return value == cond


def local_query(query, documents):
    """The OpenKIM ``query()`` of a template, over the results of the tests already run.

    Supported: ``database`` ``'data'``; ``query`` (equality, and the operators in
    :data:`QUERY_OPERATORS` on dotted keys such as ``meta.runner.kimcode`` or
    ``a.si-value``); ``project`` (one key: a list of values; several: a list of lists);
    ``limit``; ``fields`` and ``flat`` are accepted (documents are returned whole).
    """
    if not isinstance(query, dict):
        raise InputError(f"query: expected a dict, got {query!r}")
    unknown = [k for k in query if k not in ("database", "query", "project", "limit", "fields", "flat")]
    if unknown:
        raise InputError(f"query: key {unknown[0]!r} is not supported by KIMRun's local query; supported: "
                         "database, query, project, limit, fields, flat")
    if query.get("database", "data") != "data":
        raise InputError(f"query: only the 'data' database (the results of tests run here) can be queried, "
                         f"got {query.get('database')!r}")
    flt = query.get("query") or {}
    found = [d for d in documents if all(_matches(_get(d, k), c, k) for k, c in flt.items())]
    limit = query.get("limit")
    if limit:
        found = found[: int(limit)]
    project = query.get("project")
    if not project:
        return found
    if isinstance(project, str):
        project = [project]
    rows = [[_value(_get(d, k)) for k in project] for d in found]
    return [r[0] for r in rows] if len(project) == 1 else rows


def _value(v):
    return None if v is _MISSING else v


def pick(documents, test, prop, keys, units, model, where):
    """The Orchestrator's ``get_test_result``: for each instance of property ``prop`` that
    ``test`` produced with ``model``, the list of values of ``keys`` in ``units``."""
    out = []
    for d in documents:
        if d["meta"]["runner"]["kimcode"] != test.ext_id or d["meta"]["subject"]["kimcode"] != model:
            continue
        pid = str(d.get("property-id", ""))
        if pid.rsplit("/", 1)[-1] != prop and pid != prop:
            continue
        row = []
        for key, unit in zip(keys, units):
            val = d.get(key)
            if not isinstance(val, dict) or "source-value" not in val:
                have = sorted(k for k, v in d.items() if isinstance(v, dict) and "source-value" in v)
                raise PotentialError(f"{where}: property {prop!r} of {test.ext_id} has no key {key!r}; "
                                     f"it has: {', '.join(have)}")
            src = val.get("source-unit")
            if unit is None:
                row.append(val["source-value"])
            elif src is None:
                raise InputError(f"{where}: key {key!r} of {prop!r} has no unit; give None as its unit")
            else:
                row.append(convert(val["source-value"], src, unit))
        out.append(row)
    return out


def _check_result_args(args, where="get_test_result_args"):
    """A list of checked entries ``{'test': str, 'prop': str, 'keys': [...], 'units': [...]}``."""
    if isinstance(args, dict):
        args = [args]
    if not isinstance(args, (list, tuple)) or not args:
        raise InputError(f"{where}: expected a non-empty list of dicts {{'test': [...], 'prop': [...], "
                         f"'keys': [...], 'units': [...]}}, got {args!r}")
    out = []
    for i, entry in enumerate(args):
        w = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise InputError(f"{w}: expected a dict with {', '.join(RESULT_ARGS)}, got {entry!r}")
        extra = [k for k in entry if k not in RESULT_ARGS]
        if extra:
            msg = " (the model is the potential's)" if "model" in extra else ""
            raise InputError(f"{w}: unknown key {extra[0]!r}{msg}; expected: {', '.join(RESULT_ARGS)}")
        missing = [k for k in ("test", "prop", "keys") if k not in entry]
        if missing:
            raise InputError(f"{w}: missing {missing}")
        one = {}
        for k in ("test", "prop"):
            v = entry[k]
            if isinstance(v, (list, tuple)) and len(v) == 1:
                v = v[0]
            if not isinstance(v, str) or not v:
                raise InputError(f"{w}['{k}']: expected one name (a string or a list of one), got {entry[k]!r}")
            one[k] = v
        keys = entry["keys"]
        if isinstance(keys, str) or not isinstance(keys, (list, tuple)) or not keys or \
                not all(isinstance(k, str) for k in keys):
            raise InputError(f"{w}['keys']: expected a non-empty list of property keys, got {keys!r}")
        units = entry.get("units", [None] * len(keys))
        if isinstance(units, str) or not isinstance(units, (list, tuple)) or len(units) != len(keys):
            raise InputError(f"{w}['units']: expected a list of {len(keys)} units (one per key, None for "
                             f"unitless), got {units!r}")
        for u in units:
            if u is not None:
                _si_unit(u)
        one["keys"], one["units"] = list(keys), list(units)
        out.append(one)
    return out


# ---------------------------------------------------------------------- the property
class KIMRun:
    """OpenKIM tests the user brings, as a target property.

    Parameters
    ----------
    test_dirs : list of str
        Folders holding the test (``..._TE_...``) and test driver (``..._TD_...``) folders
        (an item folder itself is accepted too). Never written.
    python_executable : str, optional
        Python that runs runners with a Python shebang (the tests' own environment);
        default: each runner is run as an executable.
    get_test_result_args : list of dict, optional
        What to pick (also accepted by :meth:`calculate_property`): each
        ``{'test': [id], 'prop': [property name], 'keys': [...], 'units': [...]}``.
    timeout : float, optional
        Seconds one test may run (default 3600).
    work_dir : str, optional
        Where the private copies, outputs and private models go (a new folder inside);
        default a temporary folder, removed when a calculation succeeds.

    Examples
    --------
    See docs/kimrun.md.
    """

    target_property_type = "KIMRun"
    backend = "kimrun"  # always run as jobs by the FIM property score (seconds per point)

    def __init__(self, test_dirs, python_executable=None, get_test_result_args=None, timeout=None,
                 work_dir=None):
        self._init_args = {"test_dirs": [str(d) for d in test_dirs] if isinstance(test_dirs, (list, tuple))
                           else test_dirs, "python_executable": python_executable,
                           "get_test_result_args": copy.deepcopy(get_test_result_args), "timeout": timeout,
                           "work_dir": work_dir}
        self.items = _scan(test_dirs)
        self.test_dirs = [str(Path(d).resolve()) for d in
                          ([test_dirs] if isinstance(test_dirs, (str, os.PathLike)) else test_dirs)]
        if python_executable is not None:
            exe = shutil.which(str(python_executable))
            if exe is None:
                raise InputError(f"python_executable: {python_executable!r} is not an executable file")
            python_executable = exe
        self.python_executable = python_executable
        # every program this property will run, checked against the user's allow-list (inside a
        # job) or recorded as named by the user (in the process that writes the jobs): docs/jobs.md
        for program in ([python_executable] if python_executable else []) + [
                it.path / "runner" for it in self.items.values() if (it.path / "runner").is_file()]:
            check_executable_allowed(program, "KIMRun runner" if program != python_executable
                                     else "python_executable")
        self.result_args = None if get_test_result_args is None else self._checked(get_test_result_args)
        self.timeout = DEFAULT_TIMEOUT if timeout is None else check_positive(timeout, "timeout", allow_array=False)
        if work_dir is not None and not Path(work_dir).is_dir():
            raise InputError(f"work_dir: no such folder: {str(work_dir)!r}")
        self.work_dir = work_dir
        self._size = None
        self.last_timings = None

    def _checked(self, args):
        entries = _check_result_args(args)
        for i, e in enumerate(entries):
            e["item"] = _resolve(e["test"], self.items, f"get_test_result_args[{i}]['test']")
            if e["item"].type != "TE":
                raise InputError(f"get_test_result_args[{i}]['test']: {e['test']!r} is a test driver, not a test")
        return entries

    # ------------------------------------------------------------------ spec form
    @classmethod
    def from_spec(cls, spec, calculate_property_args=None):
        """Build from ``{'target_property_type': 'KIMRun', 'target_property_args': {...}}`` (or
        the FIM module's ``{'init_args': ..., 'calculate_property_args': ...}``); a
        ``get_test_result_args`` in ``calculate_property_args`` joins the init arguments."""
        from atomscore.properties.common import build_from_spec

        if isinstance(spec, dict) and "init_args" in spec:
            calculate_property_args = spec.get("calculate_property_args") or calculate_property_args
        calc = calculate_property_args or {}
        extra = {"get_test_result_args": calc["get_test_result_args"]} if "get_test_result_args" in calc else None
        return build_from_spec(cls, spec, extra)

    def to_spec(self):
        """The JSON-able dict that re-creates this property (picks included)."""
        from atomscore.properties.common import spec_of

        spec = spec_of(self)
        spec["target_property_args"]["test_dirs"] = self.test_dirs
        return spec

    @property
    def units(self):
        """The units of the picked keys, flattened (``None`` for unitless)."""
        if self.result_args is None:
            return None
        return [u for e in self.result_args for u in e["units"]]

    # ------------------------------------------------------------------ FIM interface
    def check_potential(self, potential):
        """Return ``potential`` as a KIMPotential; the tests run once here to learn the
        length of the property vector (:attr:`property_size`)."""
        from atomscore.potentials.kim import KIMPotential

        if self.result_args is None:
            raise InputError("KIMRun: no get_test_result_args (give them in calculate_property_args)")
        pot = KIMPotential.from_spec(potential)
        if self._size is None:
            self._size = len(self.property_vector(pot))
        return pot

    @property
    def property_size(self) -> int:
        """Length of :meth:`property_vector` (known after :meth:`check_potential`)."""
        if self._size is None:
            raise InputError("KIMRun: the property vector's length is known after a first run "
                             "(check_potential or property_vector)")
        return self._size

    def property_vector(self, potential):
        """Every picked value, flattened to floats (the Orchestrator's ``flatten=True``)."""
        res = self.calculate_property(potential)
        flat = []

        def walk(v):
            if isinstance(v, (list, tuple)):
                for x in v:
                    walk(x)
            elif isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
                flat.append(float(v))
            else:
                raise PotentialError(f"KIMRun: a picked value is not a number ({v!r}); pick numeric keys "
                                     "for a FIM property vector")

        walk(res["property_value"])
        vec = np.array(flat, dtype=float)
        if self._size is not None and vec.size != self._size:
            raise PotentialError(f"KIMRun: the property vector had {self._size} values at the first point "
                                 f"and {vec.size} now; the tests returned a different number of instances")
        return vec

    # ------------------------------------------------------------------ running
    def calculate_property(self, potential, get_test_result_args=None):
        """Run the tests (dependencies first) with ``potential`` and pick the results.

        Parameters
        ----------
        potential : KIMPotential or dict
            Its live parameters are used (installed as a private model when they differ from
            the installed model's).
        get_test_result_args : list of dict, optional
            Default: the constructor's.

        Returns
        -------
        dict
            ``property_value`` (per entry of ``get_test_result_args``, per property instance,
            per key: values in the units asked), ``property_std`` (None, as the
            Orchestrator's), ``model_name`` (the model the tests ran with),
            ``tests`` (the tests run, in order), ``timings`` (seconds: ``install``, ``run``).
        """
        from atomscore.potentials.kim import KIMPotential

        entries = self.result_args if get_test_result_args is None else self._checked(get_test_result_args)
        if entries is None:
            raise InputError("get_test_result_args: none given (to KIMRun or to calculate_property)")
        pot = KIMPotential.from_spec(potential)
        order = run_order([e["item"] for e in entries], self.items)  # a cycle is refused before any work
        base = Path(tempfile.mkdtemp(prefix="atomscore-kimrun-", dir=self.work_dir))
        keep = False  # a failed test's folder is kept for a look (its path is in the error)
        try:
            t0 = time.perf_counter()
            model, collection = self._model_for(pot, base)
            t1 = time.perf_counter()
            docs = self._run_tests(order, model, collection, base)
            t2 = time.perf_counter()
            values = [pick(docs, e["item"], e["prop"], e["keys"], e["units"], model, f"get_test_result_args[{i}]")
                      for i, e in enumerate(entries)]
            for i, (v, e) in enumerate(zip(values, entries)):
                if not v:
                    raise PotentialError(f"get_test_result_args[{i}]: {e['item'].ext_id} produced no property "
                                         f"{e['prop']!r} (its results: {base / e['item'].ext_id / 'output'})")
        except PotentialError:
            keep = True
            raise
        finally:
            if not keep and self.work_dir is None:
                shutil.rmtree(base, ignore_errors=True)
        self.last_timings = {"install": t1 - t0, "run": t2 - t1}
        return {"property_value": values, "property_std": None, "model_name": model,
                "tests": [t.ext_id for t in order], "timings": dict(self.last_timings)}

    def _model_for(self, pot, base):
        """(model name, private collection or None) for the potential at its live parameters."""
        from atomscore.potentials.portable import install_parameterized

        private = getattr(pot, "private_model", None)
        unchanged = "parameters" not in pot.to_spec()["potential_args"]
        if unchanged:
            return (private.name, private.collection) if private else (pot.kim_id, None)
        model = install_parameterized(pot, base / "kim-models", kim_api=pot.kim_api)
        return model.name, model.collection

    def _run_tests(self, order, model, collection, base):
        # private copies: the tests and every driver (a runner may write beside itself)
        copies = {}
        for it in self.items.values():
            if it.type == "TD" or it in order:
                dst = base / it.ext_id
                shutil.copytree(it.path, dst, symlinks=True)
                copies[it.ext_id] = dst
        docs = []
        for test in order:
            instances = self._run_one(test, model, collection, copies, docs)
            docs.extend(_documents(instances, test, model))
        return docs

    def _run_one(self, test, model, collection, copies, docs):
        jinja2 = import_extra("jinja2", "KIMRun", "kim")
        from atomscore.potentials.portable import environment_with

        folder = copies[test.ext_id]
        tpl = folder / "pipeline.stdin.tpl"
        if not tpl.is_file():
            raise InputError(f"{test.ext_id}: no pipeline.stdin.tpl in {test.path}")
        (folder / "output").mkdir(exist_ok=True)
        drivers = {}

        def path(ref):
            it = _resolve(ref, self.items, f"{test.ext_id}/pipeline.stdin.tpl: path()")
            if it.ext_id not in copies:
                raise InputError(f"{test.ext_id}/pipeline.stdin.tpl: path({ref!r}) names a test that is not "
                                 f"run here (not a dependency); path() is for test drivers and tests run first")
            where = copies[it.ext_id]
            if it.type in ("TE", "TD"):
                drivers[str(where / "runner")] = where / "runner"
                return str(where / "runner")
            return str(where)

        def get_test_result(test_ids, models, props, keys, units=None):
            t = _resolve(test_ids[0] if isinstance(test_ids, list) else test_ids, self.items, "get_test_result")
            p = props[0] if isinstance(props, list) else props
            return pick(docs, t, p, keys, units or [None] * len(keys), model, "get_test_result")

        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), block_start_string="@[",
                                 block_end_string="]@", variable_start_string="@<", variable_end_string=">@",
                                 comment_start_string="@#", comment_end_string="#@",
                                 undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        env.globals.update(path=path, query=lambda q: local_query(q, docs), get_test_result=get_test_result,
                           convert=convert)
        try:
            text = env.get_template("pipeline.stdin.tpl").render(
                MODELNAME=model, SUBJECTNAME=model, TESTNAME=test.ext_id, RUNNERNAME=test.ext_id)
        except (InputError, PotentialError):
            raise
        except Exception as exc:  # jinja2's template and undefined-name errors
            raise InputError(f"{test.ext_id}/pipeline.stdin.tpl: cannot render it ({type(exc).__name__}: {exc})") from None
        (folder / "output" / "pipeline.stdin").write_text(text)
        first, _, rest = text.partition("\n")
        if first.strip() in drivers:  # the standard wrapper: first line is the driver to run on the rest
            runner, stdin = drivers[first.strip()], rest
        else:
            runner, stdin = folder / "runner", text
        cmd = self._command(runner, test)
        run_env = os.environ.copy() if collection is None else environment_with(collection)
        try:
            with open(folder / "output" / "pipeline.stdout", "w") as out, \
                    open(folder / "output" / "pipeline.stderr", "w") as err:
                proc = subprocess.run(cmd, input=stdin, text=True, cwd=folder, env=run_env, stdout=out,
                                      stderr=err, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise PotentialError(f"{test.ext_id} ran longer than {self.timeout} s (its folder: {folder})") from None
        if proc.returncode != 0:
            tail = (folder / "output" / "pipeline.stderr").read_text()[-2000:]
            raise PotentialError(f"{test.ext_id} failed (exit {proc.returncode}) with model {model}: {' '.join(cmd)}"
                                 f"\n{tail}\n(its folder: {folder})")
        results = folder / "output" / "results.edn"
        if not results.is_file():
            raise PotentialError(f"{test.ext_id} wrote no output/results.edn (its folder: {folder})")
        data = _load_edn(results, test.ext_id)
        data = [data] if isinstance(data, dict) else data
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            raise PotentialError(f"{test.ext_id}: output/results.edn holds no list of property instances")
        return data

    def _command(self, runner, test):
        if not runner.is_file():
            raise InputError(f"{test.ext_id}: no runner at {runner}")
        with open(runner, "rb") as fh:
            shebang = fh.readline(200)
        if self.python_executable and shebang.startswith(b"#!") and b"python" in shebang:
            return [self.python_executable, str(runner)]
        if not os.access(runner, os.X_OK):
            raise InputError(f"{test.ext_id}: {runner.name} at {runner} is not executable"
                             + ("" if self.python_executable else " (a Python runner can be run with "
                                "python_executable)"))
        return [str(runner)]
