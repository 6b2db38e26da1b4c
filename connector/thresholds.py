"""Choose the auto-accept confidence threshold from human-labeled items, with a stated guarantee.

An item is auto-accepted when its calibrated top-class confidence is ``>= threshold``; everything
below goes to a human. :func:`choose_accept_threshold` picks the lowest threshold whose error among
accepted items is *certified* to be at most ``target_error`` at confidence ``1 - delta``, using
the human-labeled items (confidence plus whether the model was right) as evidence:

* For a candidate ``t``, take the labeled items with ``confidence >= t``: ``n`` of them, ``errors``
  wrong. The test passes when the one-sided Clopper-Pearson upper bound (:func:`error_upper_bound`)
  on their error rate is ``<= target_error``: an upper confidence bound, not the point estimate
  ``errors / n``, so thin evidence cannot pass.
* Fixed-sequence testing, as in Learn then Test (Angelopoulos et al., 2021): the candidates are
  tested from the highest threshold down, and testing stops at the first failure. The answer is the
  lowest threshold that passed. Because the order is fixed before any label is looked at and the
  sequence ends at the first failure, the chance that *any* passed threshold has true error above
  the target is at most ``delta`` with no Bonferroni correction: a wrongly passed threshold needs the
  first true null in the sequence to be rejected, which happens with probability ``<= delta``.
  (The default candidates are the labeled confidences themselves: the grid then depends on the
  confidences but never on correctness; the unit tests check the guarantee by simulation.)
* Candidates so high that even zero errors could not pass (``n`` below the zero-error sample size
  :func:`zero_error_n`, or below ``min_n``) are not tested at all: they form the top of the
  sequence, because ``n`` only grows as ``t`` falls, and whether a candidate is one of them depends
  on the confidences alone, never on correctness, so the sequence is still fixed before the labels
  are read. (Testing them would fail every time and end the sequence before it starts.)
* If nothing passes, nothing is auto-accepted: the threshold is ``math.nextafter(1.0, 2.0)``, which
  no probability reaches, ``review_rate`` is 1.0, and the note says how many error-free confident
  labeled items the target needs.

The review rate the threshold implies is the share of the pool (all items the threshold will be
applied to) with ``confidence < threshold``. A band ``(lo, hi)`` on it is kept when the data allows:
below ``lo``, the threshold is raised to the pool quantile that sends ``lo`` to review (accepting a
subset of the certified items: safe when error does not rise with confidence, as for calibrated
scores); above ``hi``, the certified threshold is kept (safety first) and the result says the band
cannot be met at this target.

A stricter target never gives a lower threshold when consecutive candidates differ by one labeled
item (distinct confidences); with large tie groups the zero-error start point can skip a candidate
that a looser target tested and failed on, so this can be violated in rare cases.

numpy and scipy only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special

#: threshold returned when no candidate passes: ``confidence >= ACCEPT_NOTHING`` is never true
ACCEPT_NOTHING = math.nextafter(1.0, 2.0)
#: at most this many entries in ``ThresholdChoice.curve`` (evenly spaced over the tested candidates)
CURVE_POINTS = 1000
_EPS = 1e-9


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def _ucb(errors: np.ndarray, n: np.ndarray, delta: float) -> np.ndarray:
    """Vectorized Clopper-Pearson upper bound; 1.0 where ``n == 0`` or ``errors >= n``."""
    errors = np.asarray(errors, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    ok = (n > 0) & (errors < n)
    out = np.ones(np.broadcast(errors, n).shape)
    e, m = np.broadcast_to(errors, out.shape)[ok], np.broadcast_to(n, out.shape)[ok]
    out[ok] = special.betaincinv(e + 1.0, m - e, 1.0 - delta)
    return out


def _passes(errors: np.ndarray, n: np.ndarray, target: float, delta: float) -> np.ndarray:
    """``ucb <= target`` without inverting the beta: ``P(Binomial(n, target) <= errors) <= delta``.

    By Clopper-Pearson duality, ``ucb(errors, n) <= target`` iff ``I_target(errors + 1, n - errors)
    >= 1 - delta`` (``I`` the regularized incomplete beta), which is ~20x cheaper than ``betaincinv``.
    """
    errors = np.asarray(errors, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    ok = (n > 0) & (errors < n)
    out = np.zeros(n.shape, dtype=bool)
    out[ok] = special.betainc(errors[ok] + 1.0, n[ok] - errors[ok], target) >= 1.0 - delta
    return out


def error_upper_bound(errors: float, n: float, *, delta: float = 0.05) -> float:
    """One-sided Clopper-Pearson upper bound, at confidence ``1 - delta``, on an error rate.

    ``errors`` of ``n`` wrong; non-integer (effective) counts are allowed. Equal to
    ``scipy.stats.beta.ppf(1 - delta, errors + 1, n - errors)``, and to the upper end of the
    two-sided exact interval at level ``1 - 2 * delta``. ``n == 0`` or ``errors == n`` gives 1.0.
    """
    _check_delta(delta)
    if not (math.isfinite(errors) and math.isfinite(n)) or n < 0 or not 0 <= errors <= n:
        raise ValueError(f"need 0 <= errors <= n, got errors={errors!r}, n={n!r}")
    return float(_ucb(np.asarray(errors), np.asarray(n), delta))


def zero_error_n(target_error: float, *, delta: float = 0.05) -> int:
    """Smallest ``n`` with ``error_upper_bound(0, n, delta=delta) <= target_error``.

    The fewest error-free labeled items that can certify ``target_error`` (about
    ``log(delta) / log(1 - target_error)``: 45 for 5% at ``delta=0.1``, 59 at ``delta=0.05``).
    """
    _check_delta(delta)
    if not 0.0 < target_error < 1.0:
        raise ValueError(f"target_error must be in (0, 1), got {target_error!r}")
    n = max(1, math.ceil(math.log(delta) / math.log1p(-target_error)))
    # the closed form is exact up to rounding; settle the last unit with the same test the rule uses
    while not _passes(np.zeros(1), np.array([n]), target_error, delta)[0]:
        n += 1
    while n > 1 and _passes(np.zeros(1), np.array([n - 1]), target_error, delta)[0]:
        n -= 1
    return n


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen auto-accept threshold, its evidence, and the review rate it implies.

    ``n``, ``errors``, ``error_rate`` (0.0 when ``n == 0``) and ``error_ucb`` describe the labeled
    items with ``confidence >= threshold``. ``meets_target`` says the fixed-sequence test certified
    the target at ``safe_threshold`` (the lowest threshold that passed) and ``threshold`` is not
    below it; that equals ``error_ucb <= target_error`` unless the review band raised the threshold,
    where the bound is recomputed on fewer items and can be looser though the accepted items are a
    more confident subset. ``curve`` has one dict per candidate tested (``threshold, n, errors,
    ucb, review_rate, passed``), thinned evenly to at most :data:`CURVE_POINTS` entries (the first
    tested, the lowest passed and the failing candidate are always kept).
    """

    threshold: float
    error_ucb: float
    error_rate: float
    n: int
    errors: int
    review_rate: float
    meets_target: bool
    within_band: bool
    note: str
    curve: list[dict]
    safe_threshold: float

    def to_dict(self) -> dict:
        """Plain-Python dict (JSON-ready) of every field, ``curve`` included."""
        return asdict(self)


def _as_1d(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and (not np.all(np.isfinite(a)) or a.min() < 0.0 or a.max() > 1.0):
        raise ValueError(f"{name} must hold finite values in [0, 1]")
    return a


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def choose_accept_threshold(
    confidence,
    correct,
    *,
    target_error: float,
    delta: float = 0.05,
    pool_confidence=None,
    review_band: tuple[float, float] = (0.0, 1.0),
    candidates=None,
    min_n: int = 1,
) -> ThresholdChoice:
    """Lowest threshold whose accepted-item error is certified ``<= target_error`` w.p. ``1 - delta``.

    Parameters
    ----------
    confidence : array of shape (n,)
        Calibrated top-class confidence of the human-labeled items, from honest (out-of-sample)
        predictions.
    correct : bool array of shape (n,)
        Whether the model's label equals the human label.
    target_error : float in (0, 1)
        Largest acceptable error rate among auto-accepted items.
    delta : float in (0, 1)
        The guarantee fails with probability at most ``delta`` (family-wise, over all candidates:
        fixed-sequence testing needs no Bonferroni correction; see the module docstring).
    pool_confidence : array, optional
        Confidences of all items the threshold will be applied to (default: ``confidence``);
        ``review_rate = mean(pool_confidence < threshold)``.
    review_band : (lo, hi)
        Wanted range of the review rate, ``0 <= lo <= hi <= 1``. Below ``lo`` the threshold is
        raised; above ``hi`` it is kept and ``within_band`` is False.
    candidates : array, optional
        Thresholds to test, in [0, 1] (tested from high to low, duplicates dropped). Default: the
        unique labeled confidences. Threshold ``t`` accepts ``confidence >= t``, so ties are all in.
    min_n : int
        Candidates with fewer labeled items at or above them are not tested.
    """
    c = _as_1d(confidence, "confidence")
    ok = np.asarray(correct)
    if ok.ndim != 1 or len(ok) != len(c):
        raise ValueError(f"confidence and correct must be 1-D of equal length, got {c.shape} and {ok.shape}")
    if ok.dtype != bool:
        if ok.size and not np.isin(ok, (0, 1)).all():
            raise ValueError("correct must be boolean (or 0/1)")
        ok = ok.astype(bool)
    if not 0.0 < target_error < 1.0:
        raise ValueError(f"target_error must be in (0, 1), got {target_error!r}")
    _check_delta(delta)
    lo, hi = (float(v) for v in review_band)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"review_band must satisfy 0 <= lo <= hi <= 1, got {review_band!r}")
    if int(min_n) != min_n or min_n < 1:
        raise ValueError(f"min_n must be an integer >= 1, got {min_n!r}")
    pool = np.sort(c if pool_confidence is None else _as_1d(pool_confidence, "pool_confidence"))
    if pool.size == 0:
        raise ValueError("pool_confidence is empty (and so is confidence): no review rate to report")

    # sort once; at threshold t the accepted labeled items are order[searchsorted(t, 'left'):]
    order = np.argsort(c, kind="stable")
    cs = c[order]
    wrong_suffix = np.concatenate([np.cumsum((~ok[order])[::-1])[::-1], [0]])  # errors in cs[i:]
    total = len(cs)

    def stats_at(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i = np.searchsorted(cs, t, side="left")
        return total - i, wrong_suffix[i], np.searchsorted(pool, t, side="left") / pool.size

    if candidates is None:
        cand = np.unique(cs)[::-1]
    else:
        cand = np.unique(_as_1d(candidates, "candidates"))[::-1]
    n_c, e_c, r_c = stats_at(cand)

    # untested prefix: too few items for even zero errors to pass (depends on confidences only)
    n_zero = zero_error_n(target_error, delta=delta)
    n_start = max(int(min_n), n_zero)
    start = int(np.searchsorted(n_c, n_start, side="left"))  # n_c is nondecreasing along cand

    # test down from `start` in growing chunks until the first failure
    passed_to = start  # cand[start:passed_to] passed
    fail_at = None
    chunk = 256
    while passed_to < len(cand):
        stop = min(len(cand), passed_to + chunk)
        p = _passes(e_c[passed_to:stop], n_c[passed_to:stop], target_error, delta)
        if not p.all():
            fail_at = passed_to + int(np.argmin(p))
            passed_to = fail_at
            break
        passed_to = stop
        chunk *= 4
    tested_end = len(cand) if fail_at is None else fail_at + 1
    tested = np.arange(start, tested_end)
    if len(tested) > CURVE_POINTS:
        keep = np.linspace(start, tested_end - 1, CURVE_POINTS - 1).round().astype(int)
        tested = np.unique(np.append(keep, max(start, passed_to - 1)))  # the chosen candidate stays in
    ucb_tested = _ucb(e_c[tested], n_c[tested], delta)
    curve = [
        {"threshold": float(cand[k]), "n": int(n_c[k]), "errors": int(e_c[k]), "ucb": float(u),
         "review_rate": float(r_c[k]), "passed": bool(k < passed_to)}
        for k, u in zip(tested.tolist(), ucb_tested.tolist(), strict=True)
    ]
    conf_txt = f"{_pct(1 - delta)} confidence"

    certified = passed_to > start
    if certified:
        k = passed_to - 1
        safe_t = float(cand[k])
        why = (f"Auto-accept confidence >= {safe_t:.6g}: the error among the {int(n_c[k])} labeled items there "
               f"({int(e_c[k])} wrong) is at most {_pct(float(_ucb(e_c[k], n_c[k], delta)))} with {conf_txt}, "
               f"within the {_pct(target_error)} target")
        why += "; it is the lowest candidate tested." if fail_at is None else (
            f"; the next candidate down ({float(cand[fail_at]):.6g}) failed, which ends the sequence.")
    else:
        safe_t = ACCEPT_NOTHING
        if start < len(cand):
            k = start
            evidence = (f"the highest testable threshold {float(cand[k]):.6g} has {int(n_c[k])} labeled items with "
                        f"{int(e_c[k])} wrong (error bound {_pct(float(_ucb(e_c[k], n_c[k], delta)))})")
        else:
            evidence = f"there are {total} labeled items, fewer than the {n_start} needed to test any threshold"
        why = (f"The {_pct(target_error)} error target cannot be met with {conf_txt} on the evidence at hand: "
               f"{evidence}. Certifying it needs at least {n_zero} error-free labeled items at or above the "
               f"threshold (more if any are wrong); nothing is auto-accepted.")

    threshold = safe_t
    safe_review = float(np.searchsorted(pool, safe_t, side="left") / pool.size)
    band_txt = f"[{_pct(lo)}, {_pct(hi)}]"
    if safe_review < lo - _EPS:
        need = min(pool.size, max(1, math.ceil(lo * pool.size - _EPS)))  # pool items that must fall below t
        if need < pool.size and pool[need] > pool[need - 1]:
            threshold = float(pool[need])
        else:
            threshold = math.nextafter(float(pool[need - 1]), 2.0)
        why += (f" The threshold was raised from {safe_t:.6g} to {threshold:.6g} so that at least {_pct(lo)} of "
                f"the pool is reviewed (the certified threshold alone would review {_pct(safe_review)}).")
    elif safe_review > hi + _EPS:
        k_hi = min(pool.size - 1, math.floor(hi * pool.size + _EPS))  # at most k_hi pool items below t
        t_hi = float(pool[k_hi])
        n_hi, e_hi, _ = stats_at(np.array([t_hi]))
        why += (f" The review band {band_txt} cannot be met at this target, which needs a review rate of "
                f"{_pct(safe_review)}. Reviewing only {_pct(hi)} means accepting confidence >= {t_hi:.6g}, where "
                f"the error bound is {_pct(float(_ucb(e_hi, n_hi, delta)[0]))} ({int(n_hi[0])} labeled items, "
                f"{int(e_hi[0])} wrong).")

    n_t, e_t, r_t = (float(v[0]) for v in stats_at(np.array([threshold])))
    within = lo - _EPS <= r_t <= hi + _EPS
    ucb_t = float(_ucb(e_t, n_t, delta))
    if threshold != safe_t and not within:
        why += f" Ties in the pool push the review rate to {_pct(r_t)}, above the band."
    if threshold != safe_t and certified and ucb_t > target_error:
        why += (f" On its own, the thinner evidence above the raised threshold ({int(n_t)} labeled items, "
                f"{int(e_t)} wrong) bounds the error only at {_pct(ucb_t)}.")
    return ThresholdChoice(
        threshold=float(threshold),
        error_ucb=ucb_t,
        error_rate=e_t / n_t if n_t else 0.0,
        n=int(n_t),
        errors=int(e_t),
        review_rate=r_t,
        meets_target=certified,
        within_band=bool(within),
        note=why,
        curve=curve,
        safe_threshold=float(safe_t),
    )
