"""Small-sample statistics for the experiments: Student's t, paired differences over seeds, and how
many seeds a difference needs.

The experiments run every row with the same seeds (seed s fixes the data order and the initialisation
of every row alike), so two rows are compared seed by seed: d_s = a_s - b_s. What the rows share
through the seed (an easy or a hard data order) cancels in d_s, and the question becomes whether the
mean of the d_s is away from 0 by more than its own spread allows:

    d̄ ± t_{(1+c)/2, n-1} s_d / √n      (the c-confidence interval of the mean difference)

with s_d the standard deviation of the d_s over the n seeds and t the quantile of Student's t
distribution with n - 1 degrees of freedom. The t quantile is computed here, not looked up: its
distribution function through the regularised incomplete beta function (a continued fraction), its
inverse by bisection. Only the standard library: no scipy.
"""

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

_TINY = 1e-300  # stands in for a zero denominator in the continued fraction
_EPS = 1e-15  # the continued fraction stops when a step changes it by less than this, relatively
_MAX_TERMS = 100_000  # the terms needed grow like sqrt(max(a, b)); here a, b <= df / 2 <= 5 * 10^6
_NORMAL_DF = 1e7  # beyond this many degrees of freedom t's quantiles are the normal's (to ~1e-6)


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of the incomplete beta function, evaluated by the modified Lentz method:

        I_x(a, b) = x^a (1-x)^b / (a B(a, b)) * 1 / (1 + d_1 / (1 + d_2 / (1 + ...)))

        d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))
        d_{2m}   = m (b - m) x / ((a + 2m - 1)(a + 2m))

    This function returns the fraction 1 / (1 + d_1 / (1 + ...)). Lentz's method carries the ratios
    C_j = f_j / f_{j-1} and D_j = q_{j-1} / q_j of successive convergents (f_j = p_j / q_j), so the
    fraction is built front to back and stops when a new term no longer changes it (f_j = f_{j-1} C_j D_j).
    It converges quickly for x < (a + 1) / (a + b + 2); the caller uses the symmetry for larger x.
    """
    f = _TINY  # the value so far; starts at b_0 = 0, replaced by _TINY
    c, d = f, 0.0
    for j in range(_MAX_TERMS):
        if j == 0:
            numerator = 1.0  # the leading 1 / (1 + ...)
        elif j % 2:  # d_{2m+1}
            m = (j - 1) // 2
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:  # d_{2m}
            m = j // 2
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + numerator / c
        c = c if abs(c) > _TINY else _TINY
        step = c * d
        f *= step
        if abs(step - 1.0) < _EPS:
            return f
    raise ArithmeticError(f"the incomplete beta fraction did not converge (x={x}, a={a}, b={b})")


def incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta function I_x(a, b) = B(x; a, b) / B(a, b), for 0 <= x <= 1, a, b > 0:

        I_x(a, b) = 1 / B(a, b) ∫_0^x u^(a-1) (1-u)^(b-1) du,    B(a, b) = Γ(a) Γ(b) / Γ(a + b)

    The prefactor x^a (1-x)^b / (a B(a, b)) is computed through logarithms (math.lgamma), the rest by the
    continued fraction above; for x beyond (a + 1) / (a + b + 2), where the fraction converges slowly,
    through the symmetry I_x(a, b) = 1 - I_{1-x}(b, a).
    """
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete_beta: x = {x} is not in [0, 1]")
    if a <= 0 or b <= 0:
        raise ValueError(f"incomplete_beta: a = {a} and b = {b} must be positive")
    if x == 0.0 or x == 1.0:
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    # the front factor is symmetric in (x, a) <-> (1 - x, b)
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1.0 - x, b, a) / b


def t_sf(t: float, df: float) -> float:
    """The upper tail of Student's t distribution with df degrees of freedom, P(T > t):

        P(T > t) = I_{df / (df + t²)}(df / 2, 1 / 2) / 2     for t >= 0,    P(T > t) = 1 - P(T > -t) for t < 0.

    (x = df / (df + t²) falls from 1 to 0 as |t| grows; the density (1 + t²/df)^(-(df+1)/2), integrated
    from t to infinity and substituted, is exactly this incomplete beta.)
    """
    if not df > 0:
        raise ValueError(f"t_sf: df = {df} degrees of freedom must be positive")
    if math.isinf(df):
        return statistics.NormalDist().cdf(-t)
    upper = 0.5 * incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
    return upper if t >= 0 else 1.0 - upper


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function, P(T <= t) = 1 - P(T > t) (t_sf)."""
    return 1.0 - t_sf(t, df)


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom: the t with P(T <= t) = p.

    Found by bisection on the upper tail, P(T > t) = 1 - p (t_sf), which falls monotonically in t; the
    bracket [0, hi] doubles hi until the tail is below 1 - p, then halves the bracket until it is
    ~1e-12 wide. By symmetry t_p = -t_{1-p}. For df = inf, and for df above 10^7 where the two agree to
    about 1e-6, the normal quantile. E.g. t_{0.975, 1} = 12.706, t_{0.975, 2} = 4.303, t_{0.975, 9} = 2.262.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p = {p} is not in (0, 1)")
    if not df > 0:
        raise ValueError(f"t_quantile: df = {df} degrees of freedom must be positive")
    if df > _NORMAL_DF:
        return statistics.NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    tail = 1.0 - p
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > tail:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        if t_sf(mid, df) > tail:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence = {confidence} is not in (0, 1) (0.95 for a 95 % interval)")


@dataclass(frozen=True)
class PairedDifference:
    """The mean of the paired differences d_i = a_i - b_i and its confidence interval.

    n: the number of pairs; mean: d̄; std: s_d; stderr: s_d / √n; low, high: d̄ ∓ t s_d / √n;
    excludes_zero: low > 0 or high < 0. With one pair there is no spread: std, stderr, low and high
    are None, excludes_zero is False and note says why.
    """

    n: int
    mean: float
    std: float | None
    stderr: float | None
    low: float | None
    high: float | None
    confidence: float
    excludes_zero: bool
    note: str = ""

    @property
    def half_width(self) -> float | None:
        """t_{(1+c)/2, n-1} s_d / √n, or None with one pair."""
        return None if self.high is None else self.high - self.mean


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """Compare a and b measured in pairs (a[i] and b[i] with the same seed, in the same order).

        d_i = a_i - b_i,   d̄ = (1/n) Σ d_i,   s_d = sqrt(Σ (d_i - d̄)² / (n - 1)),
        interval  d̄ ± t_{(1+c)/2, n-1} s_d / √n,

    which holds the true mean difference with probability c when the d_i are independent and roughly
    normal. 0 outside the interval: the difference is resolved (a better or worse than b); 0 inside:
    the pairs cannot tell, which is not the same as "equal".
    """
    _check_confidence(confidence)
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values against {len(b)}; pairs need the same number")
    if len(a) < 1:
        raise ValueError("paired_difference: no values; give at least one pair (two for an interval)")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n, mean = len(d), statistics.fmean(d)
    if n < 2:
        note = "one pair: no spread between seeds, so no interval"
        return PairedDifference(n, mean, None, None, None, None, confidence, False, note)
    std = statistics.stdev(d)
    stderr = std / math.sqrt(n)
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * stderr
    low, high = mean - half, mean + half
    return PairedDifference(n, mean, std, stderr, low, high, confidence, low > 0 or high < 0)


def resolvable_difference(s_d: float, n: int, confidence: float = 0.95) -> float:
    """The smallest |mean difference| n pairs with spread s_d can resolve: the interval's half-width

        h(n) = t_{(1+c)/2, n-1} s_d / √n.

    A measured d̄ with |d̄| > h(n) has an interval without 0. (A true difference of exactly h(n) gives
    such a d̄ only about half of the time: d̄ scatters around it.)
    """
    _check_confidence(confidence)
    if n < 2:
        raise ValueError(f"resolvable_difference: n = {n}; an interval needs at least 2 pairs")
    if s_d < 0:
        raise ValueError(f"resolvable_difference: s_d = {s_d} is a standard deviation, not negative")
    return t_quantile((1.0 + confidence) / 2.0, n - 1) * s_d / math.sqrt(n)


def seeds_needed(s_d: float, target: float, confidence: float = 0.95, max_seeds: int = 1000) -> int | None:
    """The smallest n >= 2 with h(n) = t_{(1+c)/2, n-1} s_d / √n <= target (resolvable_difference), so that
    a mean difference of `target` would be resolved; None if even max_seeds pairs are not enough.

    h(n) falls with n (t falls and √n grows), so the answer is found by bisection over n. s_d is taken as
    known; measured on a few seeds it is itself uncertain by tens of percent.
    """
    _check_confidence(confidence)
    if not target > 0:
        raise ValueError(f"seeds_needed: target = {target} must be a positive difference")
    if max_seeds < 2:
        raise ValueError(f"seeds_needed: max_seeds = {max_seeds}; an interval needs at least 2 pairs")
    if resolvable_difference(s_d, max_seeds, confidence) > target:
        return None
    lo, hi = 1, max_seeds  # h(lo) is too wide (or undefined), h(hi) is narrow enough
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid >= 2 and resolvable_difference(s_d, mid, confidence) <= target:
            hi = mid
        else:
            lo = mid
    return hi


__all__ = [
    "PairedDifference",
    "incomplete_beta",
    "paired_difference",
    "resolvable_difference",
    "seeds_needed",
    "t_cdf",
    "t_quantile",
    "t_sf",
]
