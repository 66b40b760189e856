#!/usr/bin/env python3
"""Times sklearn.metrics.roc_auc_score on the exact rows the Rust benchmark wrote.

Usage: sklearn_auc_timing.py Y.u8 S.f64 REPEATS  ->  prints {"auc": ..., "seconds": best-of-REPEATS}
"""
import json
import sys
import time

import numpy as np
from sklearn.metrics import roc_auc_score

y = np.fromfile(sys.argv[1], dtype=np.uint8)
s = np.fromfile(sys.argv[2], dtype="<f8")
best, auc = float("inf"), None
for _ in range(int(sys.argv[3])):
    start = time.perf_counter()
    auc = roc_auc_score(y, s)
    best = min(best, time.perf_counter() - start)
print(json.dumps({"auc": float(auc), "seconds": best}))
