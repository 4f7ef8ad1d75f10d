"""ScoreQuantity: what a score measures, and its parsing."""

from __future__ import annotations

import enum

from atomscore.errors import InputError


class ScoreQuantity(enum.Enum):
    """The quantities a score can compute.

    Everywhere atomscore takes a quantity it accepts the member itself, its name in any
    case (``"uncertainty"``) or its value (``2``).
    """

    IMPORTANCE = 1
    UNCERTAINTY = 2
    EFFICIENCY = 3
    DIVERSITY = 4
    DELTA_ENTROPY = 5
    SENSITIVITY = 6

    @classmethod
    def parse(cls, value, supported=None, where="score_quantity") -> "ScoreQuantity":
        """Return the member that ``value`` names.

        Parameters
        ----------
        value : ScoreQuantity, str or int
            The member, its name (any case) or its value.
        supported : iterable of ScoreQuantity, optional
            The quantities allowed here; anything else is refused.
        where : str
            Named in the error message (e.g. ``"LTAUForcesUQScore score_quantity"``).

        Raises
        ------
        InputError
            Listing the accepted names and values.
        """
        member = None
        if isinstance(value, cls):
            member = value
        elif isinstance(value, str):
            member = cls.__members__.get(value.strip().upper())
        elif isinstance(value, int) and not isinstance(value, bool):
            member = cls._value2member_map_.get(value)
        allowed = list(cls) if supported is None else list(supported)
        if member is None or member not in allowed:
            names = ", ".join(f"{q.name} ({q.value})" for q in allowed)
            problem = "unknown" if member is None else "unsupported"
            raise InputError(f"{where}: {problem} quantity {value!r}; expected one of: {names}")
        return member
