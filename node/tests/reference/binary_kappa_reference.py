#!/usr/bin/env python3
"""Independent reference values for `fedlnm-node stats binary` and `stats kappa`.

Computed with scikit-learn, statsmodels and plain O(m*n) numpy code, never with fedlnm's algorithms
(midranks, exact integer sweeps). Usage:

    binary_kappa_reference.py binary CASE.csv [CASE.csv ...]   # columns y_true, y_score[, y_score_b]
    binary_kappa_reference.py kappa K CASE.csv [CASE.csv ...]  # columns y_true, y_pred

Prints one JSON object keyed by file name. Undefined values are null.
"""
import json
import math
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats as scipy_stats
from sklearn import metrics
from statsmodels.stats.inter_rater import cohens_kappa
from statsmodels.stats.proportion import proportion_confint

Z = 1.959963984540054
warnings.simplefilter("ignore")


def clean(value):
    """NaN and infinities are 'undefined': JSON null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def delong_by_pairs(y, a, b=None):
    """DeLong (1988) by the O(m*n) structural components psi(X_i, Y_j); covariance of two scores."""
    pos, neg = y == 1, y == 0
    m, n = pos.sum(), neg.sum()

    def components(s):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    v10a, v01a = components(a)
    if b is None:
        return np.var(v10a, ddof=1) / m + np.var(v01a, ddof=1) / n
    v10b, v01b = components(b)
    s10 = np.cov(np.vstack([v10a, v10b]), ddof=1)
    s01 = np.cov(np.vstack([v01a, v01b]), ddof=1)
    return s10 / m + s01 / n


def wilson(k, n):
    if n == 0:
        return None
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return [float(lo), float(hi)]


def calibration(y, s):
    """Logistic recalibration y ~ 1 + logit(s) (statsmodels Logit) and calibration-in-the-large
    y ~ 1 + offset(logit(s)) (statsmodels GLM, binomial); scores clipped to [1e-12, 1 - 1e-12]."""
    p = np.clip(s, 1e-12, 1 - 1e-12)
    logit = np.log(p / (1 - p))
    out = {"calibration_intercept": None, "calibration_slope": None, "calibration_slope_se": None}
    try:
        fit = sm.Logit(y, sm.add_constant(logit, has_constant="add")).fit(disp=0, method="newton", maxiter=100, tol=1e-12)
        if fit.mle_retvals["converged"] and np.all(np.abs(fit.params) < 50):
            out["calibration_intercept"], out["calibration_slope"] = float(fit.params[0]), float(fit.params[1])
            out["calibration_slope_se"] = float(fit.bse[1])
    except Exception:  # perfect separation: statsmodels raises; the value is undefined
        pass
    glm = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=logit).fit(tol=1e-12)
    # statsmodels' IRLS can end anywhere when the offsets sit at the clipping bounds (it reports
    # 6e14 there): such a fit is no reference.
    converged = glm.converged and abs(float(glm.params[0])) < 50
    out["calibration_in_the_large"] = float(glm.params[0]) if converged else None
    return out


def binary_case(frame):
    y = frame["y_true"].to_numpy().astype(int)
    s = frame["y_score"].to_numpy().astype(float)
    n, n_pos = len(y), int(y.sum())
    n_neg = n - n_pos
    both = n_pos > 0 and n_neg > 0
    out = {"n": n, "n_pos": n_pos, "n_neg": n_neg, "lnm_rate": float(y.mean()), "lnm_rate_ci": wilson(n_pos, n)}
    out["brier"] = float(metrics.brier_score_loss(y, s)) if both else float(np.mean((s - y) ** 2))
    out["average_precision"] = float(metrics.average_precision_score(y, s)) if n_pos > 0 else None
    auc = float(metrics.roc_auc_score(y, s)) if both else None
    var = float(delong_by_pairs(y, s)) if n_pos >= 2 and n_neg >= 2 else None
    out["auc"], out["auc_var"] = auc, var
    out["auc_ci_lower"] = None if var is None else max(0.0, auc - Z * math.sqrt(var))
    out["auc_ci_upper"] = None if var is None else min(1.0, auc + Z * math.sqrt(var))
    # Youden: exact rational J over the distinct observed scores, largest threshold on ties.
    best = None
    if both:
        for t in sorted(set(s.tolist()), reverse=True):
            pred = s >= t
            tp, tn = int((pred & (y == 1)).sum()), int((~pred & (y == 0)).sum())
            j = Fraction(tp, n_pos) + Fraction(tn, n_neg) - 1
            if best is None or j > best[0]:
                best = (j, t, tp, tn)
    out["youden_threshold"] = best[1] if best else None
    out["youden_sensitivity"] = best[2] / n_pos if best else None
    out["youden_specificity"] = best[3] / n_neg if best else None
    out["youden_accuracy"] = (best[2] + best[3]) / n if best else None
    out["youden_j"] = float(best[0]) if best else None
    tn, fp, fn, tp = metrics.confusion_matrix(y, (s >= 0.5).astype(int), labels=[0, 1]).ravel()
    out["sensitivity_at_0.5"] = tp / n_pos if n_pos else None
    out["specificity_at_0.5"] = tn / n_neg if n_neg else None
    out["accuracy_at_0.5"] = float(metrics.accuracy_score(y, (s >= 0.5).astype(int)))
    out["ppv_at_0.5"] = tp / (tp + fp) if tp + fp else None
    out["ppv_ci_at_0.5"] = wilson(tp, tp + fp)
    out["npv_at_0.5"] = tn / (tn + fn) if tn + fn else None
    out.update(calibration(y, s) if both else
               {"calibration_intercept": None, "calibration_slope": None, "calibration_slope_se": None,
                "calibration_in_the_large": None})
    if both:
        fpr, tpr, thresholds = metrics.roc_curve(y, s, drop_intermediate=False)
        out["roc"] = [{"threshold": clean(t), "fpr": float(f), "tpr": float(r)} for t, f, r in zip(thresholds, fpr, tpr)]
    if "y_score_b" in frame and both:
        b = frame["y_score_b"].to_numpy().astype(float)
        delta = auc - metrics.roc_auc_score(y, b)
        if n_pos >= 2 and n_neg >= 2:
            cov = delong_by_pairs(y, s, b)
            se = math.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0))
            z = delta / se if se > 0 else None
            p = float(2 * scipy_stats.norm.sf(abs(z))) if z is not None else None
        else:
            se = z = p = None
        out["paired_delong"] = {"delta": float(delta), "se": se, "z": z, "p": p}
    return {k: (clean(v) if isinstance(v, (float, np.floating, int, np.integer)) and not isinstance(v, bool) else v)
            for k, v in out.items()}


def kappa_case(frame, k):
    truth = frame["y_true"].to_numpy().astype(int)
    pred = frame["y_pred"].to_numpy().astype(int)
    table = metrics.confusion_matrix(truth, pred, labels=list(range(k)))
    out = {"n": int(len(truth)), "k": k, "confusion": table.tolist()}
    for name, sk_weights, sm_wt in [("none", None, None), ("linear", "linear", "linear"), ("quadratic", "quadratic", "quadratic")]:
        kappa = clean(metrics.cohen_kappa_score(truth, pred, labels=list(range(k)), weights=sk_weights))
        result = cohens_kappa(table, wt=sm_wt) if sm_wt else cohens_kappa(table)
        se = clean(math.sqrt(result.var_kappa)) if result.var_kappa >= 0 else None
        se0 = clean(math.sqrt(result.var_kappa0)) if result.var_kappa0 >= 0 else None
        out[name] = {
            "kappa": kappa,
            "se": se if kappa is not None else None,
            "se0": se0 if kappa is not None else None,
            "ci_lower": kappa - Z * se if kappa is not None and se is not None else None,
            "ci_upper": kappa + Z * se if kappa is not None and se is not None else None,
        }
    return out


def main(argv):
    mode = argv[1]
    if mode == "binary":
        files, compute = argv[2:], binary_case
    elif mode == "kappa":
        k = int(argv[2])
        files, compute = argv[3:], lambda frame: kappa_case(frame, k)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps({Path(f).name: compute(pd.read_csv(f)) for f in files}))


if __name__ == "__main__":
    main(sys.argv)
