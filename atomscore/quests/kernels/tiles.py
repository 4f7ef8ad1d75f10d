"""The tiling of a kernel-sum matrix, shared by the numpy and torch tile passes."""


def tile_pairs(n_rows, n_cols, tile, symmetric):
    """(row start, column start) of every ``tile`` x ``tile`` block of an ``n_rows`` x ``n_cols``
    matrix; the upper triangle of blocks only when ``symmetric``."""
    rows = range(0, n_rows, tile)
    if symmetric:
        return [(a, b) for a in rows for b in range(a, n_cols, tile)]
    return [(a, b) for a in rows for b in range(0, n_cols, tile)]
