#!/usr/bin/env python3
"""Independent reference for `fedlnm-node stats logistic`: statsmodels `Logit` by Newton-Raphson.

Usage: logistic_reference.py DATA.csv SPEC.json
SPEC: {"outcome": "lnm", "terms": ["age", "location"], "references": {"location": "lower"}}
A term listed in "references" is categorical: treatment dummies named <column>_<level> for every
other level, levels in sorted order (as patsy's Treatment coding). Other terms are numeric.

Prints JSON: params, bse, z, pvalues, or, or_ci (exp of conf_int), llf, converged, iterations,
warnings (category and message of each warning), error (an exception's type and message) and
max_abs_coef, so that a test can see when statsmodels is fooled by or fails on separation; and an exact
separation check by linear programming (Konis 2007, scipy HiGHS): lp_separated (complete or
quasi-complete) and lp_complete.
Non-finite numbers are printed as null.
"""
import json
import math
import sys
import warnings

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.optimize import linprog


def finite(value):
    value = float(value)
    return value if math.isfinite(value) else None


def design(frame, spec):
    columns = {"const": np.ones(len(frame))}
    for term in spec["terms"]:
        reference = spec.get("references", {}).get(term)
        if reference is None:
            columns[term] = frame[term].astype(float).to_numpy()
            continue
        values = frame[term].astype(str)
        for level in sorted(values.unique()):
            if level != reference:
                columns[f"{term}_{level}"] = (values == level).astype(float).to_numpy()
    return pd.DataFrame(columns)


def separation_lp(x, y):
    """(separated, complete): is there β ≠ 0 with (2y−1)·xβ ≥ 0 on every row (strictly > 0 for complete)?"""
    signed = x * (2 * y - 1)[:, None]
    n, p = signed.shape
    # Quasi-complete or complete: maximise Σ (2y−1) xβ subject to (2y−1) xβ ≥ 0 and |β_j| ≤ 1.
    weak = linprog(-signed.sum(axis=0), A_ub=-signed, b_ub=np.zeros(n), bounds=[(-1, 1)] * p, method="highs")
    separated = weak.status == 0 and -weak.fun > 1e-7
    # Complete: maximise a common margin t ≤ 1 with (2y−1) xβ ≥ t and |β_j| ≤ 1; complete iff t > 0.
    margin = np.zeros(p + 1)
    margin[-1] = -1.0
    strict = linprog(
        margin,
        A_ub=np.column_stack([-signed, np.ones(n)]),
        b_ub=np.zeros(n),
        bounds=[(-1, 1)] * p + [(None, 1)],
        method="highs",
    )
    complete = strict.status == 0 and -strict.fun > 1e-9
    return bool(separated or complete), bool(complete)


def main():
    frame = pd.read_csv(sys.argv[1], dtype=str, keep_default_na=False)
    with open(sys.argv[2]) as handle:
        spec = json.load(handle)
    y = frame[spec["outcome"]].astype(float).to_numpy()
    x = design(frame, spec)
    out = {"names": list(x.columns), "warnings": [], "error": None}
    out["lp_separated"], out["lp_complete"] = separation_lp(x.to_numpy(), y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = sm.Logit(y, x).fit(
                method="newton", start_params=np.zeros(x.shape[1]), tol=1e-12, maxiter=100, disp=0
            )
            ci = result.conf_int(alpha=0.05)
            out.update(
                params={k: finite(v) for k, v in result.params.items()},
                bse={k: finite(v) for k, v in result.bse.items()},
                z={k: finite(v) for k, v in result.tvalues.items()},
                pvalues={k: finite(v) for k, v in result.pvalues.items()},
                odds_ratio={k: finite(np.exp(v)) for k, v in result.params.items()},
                or_ci={k: [finite(np.exp(ci.loc[k, 0])), finite(np.exp(ci.loc[k, 1]))] for k in ci.index},
                llf=finite(result.llf),
                converged=bool(result.mle_retvals.get("converged", False)),
                iterations=int(result.mle_retvals.get("iterations", -1)),
                max_abs_coef=finite(np.max(np.abs(result.params.to_numpy()))),
            )
        except Exception as error:  # noqa: BLE001 - reporting what statsmodels does is the point
            out["error"] = f"{type(error).__name__}: {error}"
    out["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
