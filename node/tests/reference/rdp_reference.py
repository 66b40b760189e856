#!/usr/bin/env python3
"""Independent reference values for the Rényi-DP accountant (`fedlnm_shared::stats::privacy`).

Computed with Google's `dp-accounting` (PyPI), its `RdpAccountant` with default orders, never with
fedlnm's code. Usage:

    rdp_reference.py CASES.json    # [{"q": .., "sigma": .., "steps": .., "delta": ..}, ...]

Prints a JSON list, one object per case: epsilon, the optimal order, and the RDP at every order.
"""
import json
import sys

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant as rdp

cases = json.loads(open(sys.argv[1]).read())
out = []
for case in cases:
    accountant = rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(
        case["q"], dp_accounting.GaussianDpEvent(case["sigma"])
    )
    accountant.compose(event, case["steps"])
    epsilon, order = accountant.get_epsilon_and_optimal_order(case["delta"])
    out.append(
        {
            "epsilon": float(epsilon),
            "order": float(order),
            "orders": [float(o) for o in accountant.orders],
            "rdp": [float(r) if r != float("inf") else None for r in accountant.rdp],
        }
    )
print(json.dumps(out))
