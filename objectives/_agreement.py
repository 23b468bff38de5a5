"""How far two scorings agree: item by item, by rank (Spearman with a confidence interval), and whether a score
can be told apart from chance at all.

- item_agreement: per task, the fraction of items whose credit is equal under two scorings (two fidelity rungs,
  or the proxy against OpenCompass).
- spearman / spearman_interval: Spearman's rho, ties at their mean rank, with a 95 % interval from Fisher's
  z-transform using Bonett & Wright's (2000) standard error for Spearman, sqrt((1 + rho^2 / 2) / (n - 3)). It
  needs n >= 4 pairs; a perfect |rho| = 1 is pulled in to 0.9999 before the transform so the interval stays
  finite. With the handful of candidates a search hands to OpenCompass the interval is wide: that is the point.
- at_chance: an accuracy (percent) over n items is indistinguishable from the chance level p0 when it lies within
  1.96 binomial standard errors of it (|acc - p0| <= 1.96 sqrt(p0 (1 - p0) / n)); for open-ended tasks (p0 = 0)
  only a score of exactly 0 is at chance.
"""
from __future__ import annotations

import math

Z95 = 1.959963984540054
RHO_CLAMP = 0.9999


def item_agreement(credits_a: dict, credits_b: dict) -> dict:
    """Task -> {"agreement": fraction of items with equal credit, "n": items compared}, over the tasks both
    scorings have. The two scorings must list the same number of items per task (the same items, in order)."""
    out = {}
    for task in (t for t in credits_a if t in credits_b):
        a, b = list(credits_a[task]), list(credits_b[task])
        if len(a) != len(b):
            raise ValueError(f"task {task}: {len(a)} items against {len(b)}; agreement needs the same items")
        equal = sum(1 for x, y in zip(a, b) if x == y or (_close(x, y)))
        out[task] = {"agreement": equal / len(a) if a else None, "n": len(a)}
    return out


def _close(x, y) -> bool:
    return isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isclose(x, y, rel_tol=0, abs_tol=1e-9)


def spearman(x_scores, y_scores) -> float | None:
    """Spearman rank correlation, ties given their average rank. None when either side is constant."""
    x, y = list(x_scores), list(y_scores)
    if len(x) != len(y):
        raise ValueError(f"spearman needs two equally long lists, got {len(x)} and {len(y)}")
    if len(x) < 2:
        raise ValueError("spearman needs at least two pairs")
    for v in (*x, *y):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"spearman needs finite numbers, got {v!r}")
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def ranks(values) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1   # ties share the mean of the ranks they span
        i = j + 1
    return out


def spearman_interval(rho: float | None, n: int, *, z: float = Z95) -> tuple[float, float] | None:
    """95 % confidence interval of Spearman's rho over n pairs (see the module docstring); None when n < 4."""
    if rho is None or n < 4:
        return None
    r = max(-RHO_CLAMP, min(RHO_CLAMP, rho))
    half = z * math.sqrt((1 + r * r / 2) / (n - 3))
    centre = math.atanh(r)
    return math.tanh(centre - half), math.tanh(centre + half)


def at_chance(accuracy_percent: float, chance_percent: float, n: int, *, z: float = Z95) -> bool:
    """True when `accuracy_percent` over `n` items cannot be told apart from `chance_percent`."""
    if n < 1:
        raise ValueError(f"at_chance needs at least one item, got n={n}")
    p0, acc = chance_percent / 100, accuracy_percent / 100
    if p0 <= 0:
        return acc <= 0
    return abs(acc - p0) <= z * math.sqrt(p0 * (1 - p0) / n)


def describe_rho(rho: float | None, n: int) -> str:
    """'0.40, 95% CI [-0.62, 0.91] over 6 candidates' or why there is no interval."""
    if rho is None:
        return f"n/a over {n} candidates (needs >= 2 scored candidates with distinct values)"
    ci = spearman_interval(rho, n)
    if ci is None:
        return f"{rho:.2f} over {n} candidates (no confidence interval below 4 candidates: not evidence either way)"
    return f"{rho:.2f}, 95% CI [{ci[0]:.2f}, {ci[1]:.2f}] over {n} candidates (Fisher z)"
