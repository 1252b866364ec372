"""Winograd F(m x m, r x r) matrices by the Cook-Toom construction, in exact rationals.

The construction evaluates the filter and the data polynomials at ``t - 1`` finite points and at
infinity (``t = m + r - 1``), multiplies point-wise and interpolates.  ``A^T`` and ``G`` follow
directly from the points; ``B^T`` is then the unique matrix that makes the 1-D bilinear algorithm
``y = A^T [(G g) * (B^T d)]`` exact, found by solving that identity in ``fractions.Fraction``.
Solving instead of writing out the interpolation formula keeps one source of truth: whatever
``A^T`` and ``G`` are, the returned ``B^T`` is provably consistent with them.

Sign convention (it fixes the scaling freedom of the bilinear algorithm, and reproduces Lavin &
Gray's published F(2,3) and F(4,3) matrices exactly): the row of ``G`` for the point 0 is made
positive, and the row of ``B^T`` for the point at infinity has a positive first non-zero entry.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import torch

Matrix = list[list[Fraction]]


def interpolation_points(count: int) -> list[Fraction]:
    """The first ``count`` finite points 0, 1, -1, 2, -2, 1/2, -1/2, 3, -3, 1/3, -1/3, ..."""
    points: list[Fraction] = [Fraction(0)]
    k = 1
    while len(points) < count:
        candidates = [Fraction(k), Fraction(-k)]
        if k > 1:
            candidates += [Fraction(1, k), Fraction(-1, k)]
        for p in candidates:
            if len(points) < count:
                points.append(p)
        k += 1
    return points


def _solve(a: Matrix, b: Matrix) -> Matrix:
    """Least-squares-free exact solve of the consistent system ``a x = b`` (a may be tall)."""
    rows, cols = len(a), len(a[0])
    aug = [list(a[i]) + list(b[i]) for i in range(rows)]
    pivot_cols: list[int] = []
    row = 0
    for col in range(cols):
        pivot = next((i for i in range(row, rows) if aug[i][col] != 0), None)
        if pivot is None:
            continue
        aug[row], aug[pivot] = aug[pivot], aug[row]
        inv = 1 / aug[row][col]
        aug[row] = [v * inv for v in aug[row]]
        for i in range(rows):
            if i != row and aug[i][col] != 0:
                f = aug[i][col]
                aug[i] = [vi - f * vr for vi, vr in zip(aug[i], aug[row])]
        pivot_cols.append(col)
        row += 1
    if len(pivot_cols) != cols:
        raise ArithmeticError("Cook-Toom system is singular; the interpolation points are not distinct")
    for i in range(row, rows):
        if any(v != 0 for v in aug[i][cols:]):
            raise ArithmeticError("Cook-Toom system is inconsistent")
    return [aug[i][cols:] for i in range(cols)]


@lru_cache(maxsize=None)
def cook_toom(m: int, r: int) -> tuple[Matrix, Matrix, Matrix]:
    """Exact ``(A^T, G, B^T)`` for F(m, r) as nested lists of ``Fraction``."""
    if m < 1 or r < 1:
        raise ValueError(f"F(m, r) needs m >= 1 and r >= 1, got m={m}, r={r}")
    t = m + r - 1
    points = interpolation_points(t - 1)

    def denominator(i: int) -> Fraction:
        out = Fraction(1)
        for j, q in enumerate(points):
            if j != i:
                out *= points[i] - q
        return out

    at: Matrix = [[p**j for p in points] + [Fraction(int(j == m - 1))] for j in range(m)]
    g: Matrix = [[p**k / denominator(i) for k in range(r)] for i, p in enumerate(points)]
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    if g[0][0] < 0:
        g[0] = [-v for v in g[0]]

    # Exactness of y_j = sum_k g_k d_{j+k} for all g, d:
    #   sum_i AT[j,i] G[i,k] BT[i,l] = [l == j + k]   for every j, k, l.
    # Unknown BT[:, l] is a t-vector per column l; the system matrix is shared by all columns.
    system = [[at[j][i] * g[i][k] for i in range(t)] for j in range(m) for k in range(r)]
    rhs = [[Fraction(int(l == j + k)) for l in range(t)] for j in range(m) for k in range(r)]
    bt = _solve(system, rhs)
    last = next(v for v in bt[t - 1] if v != 0)
    if last < 0:
        bt[t - 1] = [-v for v in bt[t - 1]]
        for row in at:
            row[t - 1] = -row[t - 1]
    return at, g, bt


def winograd_matrices(m: int, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(AT, G, BT)`` for F(m x m, r x r) as float64 tensors of shapes (m, t), (t, r), (t, t)."""
    at, g, bt = cook_toom(m, r)
    as_tensor = lambda mat: torch.tensor([[float(v) for v in row] for row in mat], dtype=torch.float64)
    return as_tensor(at), as_tensor(g), as_tensor(bt)
