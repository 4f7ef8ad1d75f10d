"""LTAU uncertainty during molecular dynamics: an ASE calculator that wraps any other.

:class:`UncertaintyCalculator` passes energy, forces and stress through from the wrapped
calculator unchanged and adds, at every step, the per-atom LTAU force uncertainty and the
mean distance to the nearest training atoms in descriptor space. With a ``threshold`` or a
``max_distance`` it stops the run (:class:`~atomscore.errors.UncertaintyExceeded`) or
records the frames that left the training set's neighbourhood, for labelling.

The faiss index is the score's, built (or loaded with ``index_path=``) when the score is
made; a step costs one descriptor evaluation and one k-NN search. See docs/md.md.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ase.calculators.calculator import Calculator, all_changes

from atomscore.errors import InputError, UncertaintyExceeded
from atomscore.ltau.score import DEFAULT_NEIGHBORS
from atomscore.validation import check_choice, check_finite_positions, check_int, load_array

#: what the wrapper adds to the wrapped calculator's properties
UQ_PROPERTIES = ("uncertainty", "descriptor_distance")

#: what ``on_exceed`` may be
ON_EXCEED = ("raise", "record")


def _check_limit(value, name):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name}: expected a number >= 0 or None, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{name}: expected a finite number >= 0, got {value!r}")
    return value


def _estimator_of(score):
    from atomscore.ltau.estimator import LTAUEstimator
    from atomscore.ltau import LTAUForcesUQScore

    if isinstance(score, type):
        raise InputError(f"score: expected an LTAUForcesUQScore built on a training set, got the class "
                         f"{score.__name__} itself; construct it with train_descriptors and error logs or PDFs")
    est = getattr(score, "estimator", None) if isinstance(score, LTAUForcesUQScore) else None
    if not isinstance(est, LTAUEstimator) or est.n_train < 1:
        raise InputError(f"score: expected an LTAUForcesUQScore built on a training set (train_descriptors and "
                         f"error logs or PDFs, or index_path), got {type(score).__name__}")
    return est


def _descriptor_function(descriptor):
    """``atoms -> array`` for a QUESTSDescriptor-like object (``compute``) or a callable."""
    compute = getattr(descriptor, "compute", None)
    if callable(compute):
        return compute
    if callable(descriptor):
        return descriptor
    raise InputError(f"descriptor: expected a QUESTSDescriptor, an object with compute(atoms) or a callable "
                     f"atoms -> (n_atoms, dim) array, got {type(descriptor).__name__}")


class UncertaintyCalculator(Calculator):
    """ASE calculator: the wrapped calculator's energy, forces and stress, plus LTAU uncertainty.

    Parameters
    ----------
    calculator : ase.calculators.calculator.BaseCalculator
        Gives energy (eV), forces (eV/Å) and stress (eV/Å³), passed through unchanged.
    score : LTAUForcesUQScore
        Its training set and faiss index (built once, or loaded with ``index_path=``).
    descriptor : QUESTSDescriptor, object with ``compute(atoms)``, or callable, optional
        Maps Atoms to ``(n_atoms, dim)`` descriptors, the kind the score was built on.
        Default: read them from the wrapped calculator's ``results[descriptors_key]``
        (an ML model's features).
    descriptors_key : str
    num_nearest_neighbors : int
        Training atoms averaged per atom (as in ``LTAUForcesUQScore.compute``).
    threshold : float, optional
        eV/Å; a step where any atom's uncertainty is above it has left the training set.
    max_distance : float, optional
        Descriptor unit; same for the mean k-NN distance.
    on_exceed : {'raise', 'record'}
        Raise :class:`~atomscore.errors.UncertaintyExceeded` (stops ASE's MD), or append
        the frame to ``flagged`` and go on (write them with :class:`FlaggedFramesWriter`).
    min_gap : int
        ``'record'``: steps (evaluations) that must separate two recorded frames; a frame
        closer to the last recorded one is skipped (default 0: none skipped). Neighbouring MD
        steps are nearly the same structure: a gap of 10-100 keeps the file small.
    min_frame_distance : float, optional
        ``'record'``: descriptor unit; a frame is a duplicate, and skipped, when every one of
        its atoms has a descriptor within this distance of an atom of a frame already
        recorded (it brings no new environment). Default None: no de-duplication. A value
        near the ``max_distance`` you flag at keeps one frame per new region.
    **kwargs
        Passed to ``ase.calculators.calculator.Calculator``.

    Attributes
    ----------
    results : dict
        The wrapped calculator's properties plus ``'uncertainty'`` (n_atoms,) eV/Å and
        ``'descriptor_distance'`` (n_atoms,).
    step : int
        Configurations evaluated so far; the frame of evaluation ``i`` carries ``step=i``
        (in ASE's MD: the frame after MD step ``i``, 0 the starting one).
    flagged : list of ase.Atoms
        Recorded frames (``on_exceed='record'``), each with ``arrays['uncertainty']``,
        ``arrays['descriptor_distance']``, ``info['step']``, energy and forces.
    skipped : dict
        Frames above a limit that were not recorded: ``{'gap': n, 'duplicate': n}``.

    Examples
    --------
    >>> calc = UncertaintyCalculator(KIM(model), score, descriptor=QUESTSDescriptor(k=8),
    ...                              num_nearest_neighbors=3, threshold=0.2)   # doctest: +SKIP
    >>> atoms.calc = calc; VelocityVerlet(atoms, 1 * units.fs).run(1000)       # doctest: +SKIP
    """

    def __init__(self, calculator, score, descriptor=None, descriptors_key="descriptors",
                 num_nearest_neighbors=DEFAULT_NEIGHBORS, threshold=None, max_distance=None, on_exceed="raise", min_gap=0,
                 min_frame_distance=None, **kwargs):
        if not (callable(getattr(calculator, "get_property", None))
                and hasattr(calculator, "implemented_properties")):
            raise InputError(f"calculator: expected an ASE calculator (get_property, implemented_properties), "
                             f"got {type(calculator).__name__}")
        if isinstance(calculator, UncertaintyCalculator):
            raise InputError("calculator: already an UncertaintyCalculator; wrap the force calculator itself")
        self.estimator = _estimator_of(score)
        self.k = check_int(num_nearest_neighbors, "num_nearest_neighbors", minimum=1)
        if self.k > self.estimator.n_train:
            raise InputError(f"num_nearest_neighbors: expected at most the {self.estimator.n_train} training "
                             f"atoms of the score, got {self.k}")
        self.threshold = _check_limit(threshold, "threshold")
        self.max_distance = _check_limit(max_distance, "max_distance")
        self.on_exceed = check_choice(on_exceed, "on_exceed", ON_EXCEED)
        self.min_gap = check_int(min_gap, "min_gap", minimum=0)
        self.min_frame_distance = _check_limit(min_frame_distance, "min_frame_distance")
        if self.on_exceed != "record" and (self.min_gap or self.min_frame_distance is not None):
            raise InputError("min_gap, min_frame_distance: they thin the recorded frames; pass on_exceed='record'")
        if descriptor is None:
            if not isinstance(descriptors_key, str) or not descriptors_key:
                raise InputError(f"descriptors_key: expected the key of the wrapped calculator's results that "
                                 f"holds the (n_atoms, dim) descriptors, got {descriptors_key!r}")
            self._describe = None
        else:
            self._describe = _descriptor_function(descriptor)
            width = getattr(descriptor, "n_features", None)
            if isinstance(width, (int, np.integer)) and width != self.estimator.dim:
                raise InputError(f"descriptor: gives {int(width)} columns ({descriptor!r}), but the score's index "
                                 f"holds descriptors of dimension {self.estimator.dim}")
        super().__init__(**kwargs)
        self.calculator = calculator
        self.score = score
        self.descriptor = descriptor
        self.descriptors_key = descriptors_key
        self.implemented_properties = list(dict.fromkeys(list(calculator.implemented_properties) + list(UQ_PROPERTIES)))
        #: frames that passed the threshold / max_distance, with ``on_exceed='record'``
        self.flagged = []
        #: index of the next evaluation (0 for the first configuration)
        self.step = 0
        #: frames above a limit that were not recorded, by reason
        self.skipped = {"gap": 0, "duplicate": 0}
        self._last_recorded = None
        self._recorded_x = []  # descriptors of the recorded frames (min_frame_distance)

    # ------------------------------------------------------------------ ASE contract
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        # before any wrapped calculator sees them: ASE's KIM calculator crashes the process on NaN positions
        check_finite_positions(atoms, f"UncertaintyCalculator (step {self.step})", allow_empty=True)
        base = [p for p in properties if p not in UQ_PROPERTIES]
        need_uq = "uncertainty" not in self.results
        if need_uq and self._describe is None and not base:
            base = ["energy"]  # the descriptors come with the wrapped calculator's results
        for name in base:
            if name not in self.results:
                self.results[name] = self.calculator.get_property(name, atoms)
        for name in self.calculator.implemented_properties:  # what it computed anyway (energy with forces)
            if name not in self.results and name not in UQ_PROPERTIES:
                value = self.calculator.get_property(name, atoms, allow_calculation=False)
                if value is not None:
                    self.results[name] = value
        if need_uq:
            self._uncertainty(atoms)

    def _descriptors(self, atoms):
        where = f"step {self.step}"
        if self._describe is None:
            results = getattr(self.calculator, "results", {}) or {}
            if self.descriptors_key not in results:
                raise InputError(f"descriptors_key={self.descriptors_key!r}: the wrapped calculator "
                                 f"{type(self.calculator).__name__} gave no results[{self.descriptors_key!r}] "
                                 f"({where}); it gave: {sorted(results) or 'nothing'}. Pass descriptor= "
                                 "(e.g. a QUESTSDescriptor) instead")
            x = results[self.descriptors_key]
            label = f"results[{self.descriptors_key!r}]"
        else:
            x = self._describe(atoms.copy())  # a copy: the calculator's state stays what was computed
            label = "descriptor(atoms)"
        x = load_array(x, label, ndim=2, where=where)
        if x.shape != (len(atoms), self.estimator.dim):
            raise InputError(f"{label} ({where}): expected shape ({len(atoms)}, {self.estimator.dim}) -- one row "
                             f"per atom, the dimension of the score's index -- got {x.shape}")
        return x

    def _uncertainty(self, atoms):
        if len(atoms) == 0:
            x, uq, dist = np.zeros((0, self.estimator.dim)), np.zeros(0), np.zeros(0)
        else:
            x = self._descriptors(atoms)
            pred = self.estimator.predict_full(x, k=self.k, distance=True)
            uq, dist = pred.errors, pred.distance
        self.results["uncertainty"] = uq
        self.results["descriptor_distance"] = dist
        step = self.step
        self.step += 1
        reasons = []
        if self.threshold is not None and uq.size and uq.max() > self.threshold:
            reasons.append(f"uncertainty {uq.max():.4g} eV/Å > threshold {self.threshold:.4g} "
                           f"({int(np.sum(uq > self.threshold))} atoms)")
        if self.max_distance is not None and dist.size and dist.max() > self.max_distance:
            reasons.append(f"descriptor distance {dist.max():.4g} > max_distance {self.max_distance:.4g} "
                           f"({int(np.sum(dist > self.max_distance))} atoms)")
        if not reasons:
            return
        if self.on_exceed == "record":
            if self._last_recorded is not None and step - self._last_recorded < self.min_gap:
                self.skipped["gap"] += 1
                return
            if self.min_frame_distance is not None and self._is_duplicate(x):
                self.skipped["duplicate"] += 1
                return
            self.flagged.append(self._frame(atoms, step, reasons))
            self._last_recorded = step
            if self.min_frame_distance is not None:
                self._recorded_x.append(np.array(x, dtype=np.float64))
            return
        frame = self._frame(atoms, step, reasons)
        raise UncertaintyExceeded(f"step {step}: " + "; ".join(reasons), frame=frame, step=step,
                                  uncertainty=uq.copy(), descriptor_distance=dist.copy())

    def _is_duplicate(self, x) -> bool:
        """Whether every row of ``x`` lies within ``min_frame_distance`` of a recorded frame's row."""
        if not self._recorded_x or len(x) == 0:
            return False
        # plain numpy, not faiss: the recorded frames are few (that is the point), and exact L2 is wanted
        x = np.asarray(x, dtype=np.float64)
        nearest = np.full(len(x), np.inf)
        for y in self._recorded_x:
            d2 = (x * x).sum(1)[:, None] - 2.0 * x @ y.T + (y * y).sum(1)[None, :]
            nearest = np.minimum(nearest, np.sqrt(np.maximum(d2.min(axis=1), 0.0)))
        return bool(np.all(nearest <= self.min_frame_distance))

    def _frame(self, atoms, step, reasons):
        """A copy of the configuration with its scores, forces and energy (for labelling)."""
        from ase.calculators.calculator import all_properties
        from ase.calculators.singlepoint import SinglePointCalculator

        frame = atoms.copy()
        for name in UQ_PROPERTIES:
            if name in frame.arrays:
                del frame.arrays[name]
            frame.new_array(name, np.array(self.results[name], dtype=float))
        frame.info["step"] = step
        frame.info["max_uncertainty"] = float(self.results["uncertainty"].max())
        frame.info["max_descriptor_distance"] = float(self.results["descriptor_distance"].max())
        frame.info["exceeded"] = "; ".join(reasons)
        frame.info["num_nearest_neighbors"] = self.k  # the settings that define the scores
        if self.min_gap:
            frame.info["min_gap"] = self.min_gap
        for name in ("threshold", "max_distance", "min_frame_distance"):
            if getattr(self, name) is not None:
                frame.info[name] = getattr(self, name)
        kept = {name: (np.array(value) if isinstance(value, np.ndarray) else value)
                for name, value in self.results.items() if name in all_properties and name not in UQ_PROPERTIES}
        if kept:
            frame.calc = SinglePointCalculator(frame, **kept)
        return frame

    # ------------------------------------------------------------------ conveniences
    def get_uncertainty(self, atoms=None):
        """Per-atom LTAU force uncertainty, ``(n_atoms,)`` in eV/Å."""
        return self.get_property("uncertainty", atoms)

    def get_descriptor_distance(self, atoms=None):
        """Per-atom mean distance to the ``k`` nearest training atoms (descriptor unit)."""
        return self.get_property("descriptor_distance", atoms)

    def __repr__(self):
        return (f"UncertaintyCalculator({type(self.calculator).__name__}, k={self.k}, threshold={self.threshold}, "
                f"max_distance={self.max_distance}, on_exceed={self.on_exceed!r}, min_gap={self.min_gap}, "
                f"min_frame_distance={self.min_frame_distance})")


class FlaggedFramesWriter:
    """MD observer: writes the frames an :class:`UncertaintyCalculator` flagged to a file.

    Attach it to the dynamics (``dyn.attach(FlaggedFramesWriter(calc, 'flagged.xyz'))``);
    each call appends the frames recorded since the last call. Any ASE format that holds
    several frames (by suffix or ``format``): extxyz keeps the per-atom scores
    (``uncertainty``, ``descriptor_distance``) to every digit; traj keeps positions,
    energy and forces.

    Parameters
    ----------
    calculator : UncertaintyCalculator
    filename : str or os.PathLike
        A new file (an existing one is never overwritten) in an existing folder.
    format : str, optional
        ASE format name; default from the suffix.
    """

    def __init__(self, calculator, filename, format=None):
        from ase.io.formats import filetype, ioformats

        if not isinstance(calculator, UncertaintyCalculator):
            raise InputError(f"calculator: expected an UncertaintyCalculator, got {type(calculator).__name__}")
        if not isinstance(filename, (str, os.PathLike)):
            raise InputError(f"filename: expected a path, got {type(filename).__name__}")
        path = Path(filename)
        if path.exists():
            raise InputError(f"filename: {str(path)!r} exists; give a new file name")
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise InputError(f"filename: folder {str(path.parent)!r} not found or not writable")
        if format is None:
            try:
                format = filetype(path, read=False)
            except ValueError as exc:
                raise InputError(f"filename: cannot tell the ASE format from {path.name!r} ({exc}); pass format=") \
                    from None
        if format not in ioformats or not ioformats[format].can_write:
            raise InputError(f"format: {format!r} is not an ASE format that can be written")
        if ioformats[format].single:
            raise InputError(f"format: {format!r} holds one frame only; use one that holds several "
                             "(extxyz, traj, db, cif, ...)")
        self.calculator = calculator
        self.path = path
        self.format = format
        self.written = 0
        self._identity = None  # (device, inode, size) of the file this writer created, after its last write

    def __call__(self):
        """Append the frames flagged since the last call; returns how many were written."""
        new = self.calculator.flagged[self.written:]
        if not new:
            return 0
        first = self._claim()
        if self.format == "extxyz":
            from atomscore.io import write_extxyz

            with open(self.path, "a") as fd:  # every float64 digit (ASE's writer keeps 8 decimals)
                write_extxyz(fd, new)
        elif self.format == "traj":
            from ase.io import Trajectory

            with Trajectory(self.path, "w" if first else "a") as traj:  # appending through ase.io.write: unsupported
                for frame in new:
                    traj.write(frame)
        else:
            from ase.io import write

            write(self.path, new, format=self.format, append=not first)
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino, st.st_size)
        self.written += len(new)
        return len(new)

    def _claim(self) -> bool:
        """Before a write: create the file (first write; True) or check it is still ours (False).

        The file is created with ``O_CREAT | O_EXCL``, so a file that appeared after this writer
        was made is never appended to or replaced; later writes check that the path still
        names the file created then, as this writer left it (not a file put in its place, or
        one that something else wrote to).
        """
        if self._identity is None:
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                raise InputError(f"filename: {str(self.path)!r} appeared after this FlaggedFramesWriter was made; "
                                 "flagged frames never replace or extend another file: give a new file name") \
                    from None
            return True
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino, st.st_size) != self._identity:
            raise InputError(f"filename: {str(self.path)!r} was removed or replaced since this FlaggedFramesWriter "
                             f"wrote {self.written} frame(s) to it; the frames are never written into another file")
        return False
