"""Flower's SecAgg+ on the workload of `benches/secagg.rs`, timed with Flower's own code; prints JSON.

Run by `cargo bench -p fedlnm-shared --bench secagg` when FLWR_PYTHON names a Python with `flwr`
installed (`python3 -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install flwr numpy`), or alone:
    python flower_secaggplus.py --params 11000000 --sites 3,10,30

What runs (read from the installed flwr source; the version is printed in the JSON):
- Client side: the real stage functions of Flower's client mod
  `flwr.client.mod.secure_aggregation.secaggplus_mod`: `_setup` (two SECP384R1 key pairs), `_share_keys`
  (`crypto.shamir.create_shares` of the self-mask seed and of sk1, Fernet-encrypted per neighbour),
  `_collect_masked_vectors` and `_unmask`, each called with the ConfigRecord the server workflow sends.
  The graph is the full one by default, as ours: `share_num` = number of sites, so every site's
  neighbours are all the others (the workflow's ring of +-share_num/2 offsets covers everyone), and
  each site adds 1 self mask + (n - 1) pairwise masks, exactly as ours does. With `--num-shares k+1`
  and `--reconstruction-threshold t` it is SecAgg+'s sparse graph, as `SecAggPlusWorkflow` builds it
  (each node with the num_shares // 2 nodes on either side of it in the node list, itself included),
  the same degree and threshold as our Harary graph (ours permutes the ring at random).
- Server side: the statements of `flwr.server.workflow.secure_aggregation.secaggplus_workflow`
  (`collect_masked_vectors_stage`: summing the uploads; `unmask_stage`: from "Build collected shares
  dict" to the dequantized average) copied here with the same Flower functions in the same order,
  because the workflow itself needs a running Grid and strategy. The decoded average is checked
  against the true one.

What is timed (time.perf_counter; numpy elementwise ops and RandomState are single-threaded, so this
is one core, as our side of the comparison):
- `client_mask_s`, per site: the body of `_collect_masked_vectors` from "Decrypt ciphertexts" to the final
  `parameters_mod`: Fernet-decrypt the n - 1 share ciphertexts, weight by n_k/max_weight
  (`parameters_multiply`), `quantization.quantize` (clip + stochastic rounding), `factor_combine`,
  the self mask (`secaggplus_utils.pseudo_rand_gen` + `parameters_addition`), for each of the n - 1
  peers the ECDH key (`generate_shared_key`) + `pseudo_rand_gen` + `parameters_addition/_subtraction`,
  and `parameters_mod`. Left out: `parameters_to_ndarrays` on the input and `ndarray_to_bytes` on the
  output (Flower's wire (de)serialization; ours is timed without serialization too). That this copy is
  Flower's function minus those two calls is checked: on one site per run, the real
  `_collect_masked_vectors` is called with the same numpy random state and must give the same masked
  vector bit for bit (`stage_fn_matches`); its full time is reported as `client_stage_fn_s`.
- `server_sum_s`: adding the n deserialized uploads (`parameters_addition`; the first upload becomes
  the sum, as in the workflow), freeing each, and the `parameters_mod` after them (`bytes_to_ndarray`
  left out).
- `server_unmask_s`: `unmask_stage` after the shares have arrived: for every site `combine_shares` of its
  self-mask seed, `pseudo_rand_gen` + `parameters_subtraction`; then `parameters_mod`, `factor_extract`,
  `dequantize`, the offset and the division by the total weight. No site drops out (as in our benchmark),
  so no pairwise mask is regenerated on either side.
- Each measurement is taken over `--round-repeats` independent rounds; the JSON has every site's
  masking time, their minimum and median, and the minimum of each server measurement.
- `primitives`: one mask of `params` elements (`pseudo_rand_gen` alone, and `pseudo_rand_gen` +
  `parameters_addition`), and the weighting + quantization, best of `--repeats`.

Parameters: Flower's defaults of `SecAggPlusWorkflow` (clipping_range 8, quantization_range 2^22,
modulus_range 2^32, max_weight 1000); n_k = 1000 and the same delta values as the Rust benchmark.
Note on what the masks are: `pseudo_rand_gen` seeds numpy's MT19937 `RandomState` with the 32-byte
seed XOR-folded to 32 bits and draws int64 values in [0, 2^32 - 1); ours expands a 256-bit seed with
ChaCha20 into u64 words. Both hold one 8-byte integer per element in memory.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np

import flwr
from flwr.app import ConfigRecord
from flwr.client.mod.secure_aggregation.secaggplus_mod import (
    SecAggPlusState,
    _collect_masked_vectors,
    _setup,
    _share_keys,
    _unmask,
)
from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_multiply,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_constants import Key
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

# SecAggPlusWorkflow's defaults.
CLIPPING_RANGE = 8.0
QUANTIZATION_RANGE = 1 << 22
MODULUS_RANGE = 1 << 32
MAX_WEIGHT = 1000.0
N_EXAMPLES = 1000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def best_of(repeats: int, f: Any) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def delta_values(params: int) -> np.ndarray:
    """The Rust benchmark's delta: ((i % 2001) - 1000) * 1e-6 as f32."""
    return (((np.arange(params) % 2001) - 1000).astype(np.float32) * np.float32(1e-6)).astype(
        np.float32
    )


def mask_like_collect_masked_vectors(
    state: SecAggPlusState, configs: ConfigRecord, num_examples: int, parameters: list
) -> list:
    """`secaggplus_mod._collect_masked_vectors` (flwr 1.41), statement for statement, without
    `parameters_to_ndarrays` on the input and `ndarray_to_bytes` on the output."""
    available_clients: list[int] = []
    ciphertexts = configs[Key.CIPHERTEXT_LIST]
    srcs = configs[Key.SOURCE_LIST]
    if len(ciphertexts) + 1 < state.threshold:
        raise ValueError("Not enough available neighbour clients.")
    for src, ciphertext in zip(srcs, ciphertexts, strict=True):
        shared_key = state.ss2_dict[src]
        plaintext = decrypt(shared_key, ciphertext)
        actual_src, dst, rd_seed_share, sk1_share = share_keys_plaintext_separate(plaintext)
        available_clients.append(src)
        if src != actual_src or dst != state.nid:
            raise ValueError("share routed to the wrong node")
        state.rd_seed_share_dict[src] = rd_seed_share
        state.sk1_share_dict[src] = sk1_share
    ratio = num_examples / state.max_weight
    q_ratio = round(ratio * state.target_range)
    dq_ratio = q_ratio / state.target_range
    parameters = parameters_multiply(parameters, dq_ratio)
    quantized_parameters = quantize(parameters, state.clipping_range, state.target_range)
    quantized_parameters = factor_combine(q_ratio, quantized_parameters)
    dimensions_list = [a.shape for a in quantized_parameters]
    private_mask = pseudo_rand_gen(state.rd_seed, state.mod_range, dimensions_list)
    quantized_parameters = parameters_addition(quantized_parameters, private_mask)
    for node_id in available_clients:
        shared_key = generate_shared_key(
            bytes_to_private_key(state.sk1),
            bytes_to_public_key(state.public_keys_dict[node_id][0]),
        )
        pairwise_mask = pseudo_rand_gen(shared_key, state.mod_range, dimensions_list)
        if state.nid > node_id:
            quantized_parameters = parameters_addition(quantized_parameters, pairwise_mask)
        else:
            quantized_parameters = parameters_subtraction(quantized_parameters, pairwise_mask)
    return parameters_mod(quantized_parameters, state.mod_range)


def unmask_like_unmask_stage(
    masked_vector: list,
    collected_shares_dict: dict[int, list[bytes]],
    active_nids: set[int],
    threshold: int,
) -> list:
    """`SecAggPlusWorkflow.unmask_stage` from the shares to the average, with no dropped site."""
    for nid, share_list in collected_shares_dict.items():
        if len(share_list) < threshold:
            raise ValueError("Not enough shares to recover secret in unmask vectors stage")
        secret = combine_shares(share_list)
        if nid not in active_nids:
            raise ValueError("this benchmark has no dropped site")
        private_mask = pseudo_rand_gen(secret, MODULUS_RANGE, get_parameters_shape(masked_vector))
        masked_vector = parameters_subtraction(masked_vector, private_mask)
    recon_parameters = parameters_mod(masked_vector, MODULUS_RANGE)
    q_total_ratio, recon_parameters = factor_extract(recon_parameters)
    inv_dq_total_ratio = QUANTIZATION_RANGE / q_total_ratio
    aggregated_vector = dequantize(recon_parameters, CLIPPING_RANGE, QUANTIZATION_RANGE)
    offset = -(len(active_nids) - 1) * CLIPPING_RANGE
    for vec in aggregated_vector:
        vec += offset
        vec *= inv_dq_total_ratio
    return aggregated_vector


def neighbourhoods(node_ids: list[int], num_shares: int) -> dict[int, list[int]]:
    """`SecAggPlusWorkflow`'s ring: each node with the num_shares // 2 nodes on either side of it
    (itself included); everyone when num_shares covers the list."""
    n = len(node_ids)
    if num_shares >= n:
        return {nid: list(node_ids) for nid in node_ids}
    half = num_shares // 2
    return {
        nid: sorted({node_ids[(i + offset) % n] for offset in range(-half, half + 1)})
        for i, nid in enumerate(node_ids)
    }


def run_round(
    n: int, delta: np.ndarray, check_stage_fn: bool, num_shares: int = 0, threshold: int = 0
) -> dict[str, Any]:
    node_ids = list(range(1, n + 1))
    num_shares = num_shares or n  # the full graph by default
    threshold = threshold or n // 2 + 1  # as ours: t > n/2
    neighbours = neighbourhoods(node_ids, num_shares)
    states: dict[int, SecAggPlusState] = {}
    public_keys: dict[int, list[bytes]] = {}
    for nid in node_ids:
        state = SecAggPlusState()
        state.nid = nid
        res = _setup(
            state,
            ConfigRecord(
                {
                    Key.SAMPLE_NUMBER: n,
                    Key.SHARE_NUMBER: len(neighbours[nid]),
                    Key.THRESHOLD: threshold,
                    Key.CLIPPING_RANGE: CLIPPING_RANGE,
                    Key.TARGET_RANGE: QUANTIZATION_RANGE,
                    Key.MOD_RANGE: MODULUS_RANGE,
                    Key.MAX_WEIGHT: MAX_WEIGHT,
                }
            ),
        )
        states[nid] = state
        public_keys[nid] = [res[Key.PUBLIC_KEY_1], res[Key.PUBLIC_KEY_2]]
    # Share keys: every site gets its neighbours' keys (everyone's in the full graph), and the server
    # routes the shares.
    forward: dict[int, tuple[list[int], list[bytes]]] = {nid: ([], []) for nid in node_ids}
    for nid in node_ids:
        res = _share_keys(
            states[nid], ConfigRecord({str(v): public_keys[v] for v in neighbours[nid]})
        )
        for dst, ciphertext in zip(res[Key.DESTINATION_LIST], res[Key.CIPHERTEXT_LIST], strict=True):
            forward[dst][0].append(nid)
            forward[dst][1].append(ciphertext)

    parameters = [delta]
    client_times: list[float] = []
    server_sum_s = 0.0
    masked_sum = None
    stage_fn_s = None
    stage_fn_matches = None
    for nid in node_ids:
        configs = ConfigRecord(
            {Key.CIPHERTEXT_LIST: forward[nid][1], Key.SOURCE_LIST: forward[nid][0]}
        )
        np.random.seed(nid)  # the stochastic rounding draws from numpy's global generator
        start = time.perf_counter()
        masked = mask_like_collect_masked_vectors(states[nid], configs, N_EXAMPLES, parameters)
        client_times.append(time.perf_counter() - start)
        if check_stage_fn and nid == node_ids[0]:
            np.random.seed(nid)
            serialized = ndarrays_to_parameters(parameters)
            start = time.perf_counter()
            res = _collect_masked_vectors(states[nid], configs, N_EXAMPLES, serialized)
            stage_fn_s = time.perf_counter() - start
            real = [bytes_to_ndarray(b) for b in res[Key.MASKED_PARAMETERS]]
            stage_fn_matches = len(real) == len(masked) and all(
                np.array_equal(a, b) for a, b in zip(real, masked)
            )
            del real, res, serialized
        # Freeing the upload is timed too, as our server frees each upload once it is added.
        start = time.perf_counter()
        masked_sum = masked if masked_sum is None else parameters_addition(masked_sum, masked)
        del masked
        server_sum_s += time.perf_counter() - start
        log(f"flower: {n} sites: site {nid} masked in {client_times[-1]:.2f} s")
    start = time.perf_counter()
    masked_sum = parameters_mod(masked_sum, MODULUS_RANGE)
    server_sum_s += time.perf_counter() - start

    collected: dict[int, list[bytes]] = {nid: [] for nid in node_ids}
    for nid in node_ids:
        res = _unmask(
            states[nid],
            # The workflow sends each node its neighbours' part of the active and dead lists.
            ConfigRecord({Key.ACTIVE_NODE_ID_LIST: neighbours[nid], Key.DEAD_NODE_ID_LIST: []}),
        )
        for owner, share in zip(res[Key.NODE_ID_LIST], res[Key.SHARE_LIST], strict=True):
            collected[owner].append(share)
    start = time.perf_counter()
    average = unmask_like_unmask_stage(masked_sum, collected, set(node_ids), threshold)
    server_unmask_s = time.perf_counter() - start
    max_abs_error = float(np.max(np.abs(average[0] - delta.astype(np.float64))))
    # Each site's error is below one step of Flower's grid (2·clip / 2^22 ≈ 3.8e-6) plus the f32
    # rounding of (x + clip) (1/8 step), so the average's is too; two steps is a sanity bound.
    if not max_abs_error < 2 * (2 * CLIPPING_RANGE / QUANTIZATION_RANGE):
        raise AssertionError(f"Flower's decoded average is off by {max_abs_error}")
    return {
        "client_mask_s": client_times,
        "client_stage_fn_s": stage_fn_s,
        "stage_fn_matches": stage_fn_matches,
        "server_sum_s": server_sum_s,
        "server_unmask_s": server_unmask_s,
        "max_abs_error": max_abs_error,
    }


def repeated_rounds(
    n: int, delta: np.ndarray, repeats: int, num_shares: int = 0, threshold: int = 0
) -> dict[str, Any]:
    """`repeats` independent rounds (fresh keys each): every site's masking time, and the fastest of
    each measurement (all sites do the same work, so the fastest is the least disturbed by other load
    on the machine)."""
    rounds = [
        run_round(n, delta, check_stage_fn=(i == 0), num_shares=num_shares, threshold=threshold)
        for i in range(repeats)
    ]
    client_times = [t for r in rounds for t in r["client_mask_s"]]
    return {
        "sites": n,
        "num_shares": num_shares or n,
        "reconstruction_threshold": threshold or n // 2 + 1,
        "repeats": repeats,
        "client_mask_s": client_times,
        "client_mask_min_s": min(client_times),
        "client_mask_median_s": statistics.median(client_times),
        "client_stage_fn_s": rounds[0]["client_stage_fn_s"],
        "stage_fn_matches": rounds[0]["stage_fn_matches"],
        "server_sum_s": min(r["server_sum_s"] for r in rounds),
        "server_unmask_s": min(r["server_unmask_s"] for r in rounds),
        "max_abs_error": max(r["max_abs_error"] for r in rounds),
    }


def primitives(delta: np.ndarray, repeats: int) -> dict[str, float]:
    shape = [delta.shape]
    target = [np.zeros(delta.shape, dtype=np.int64)]
    np.random.seed(0)
    return {
        "prg_s": best_of(repeats, lambda: pseudo_rand_gen(b"\x07" * 32, MODULUS_RANGE, shape)),
        "mask_add_s": best_of(
            repeats,
            lambda: parameters_addition(
                target, pseudo_rand_gen(b"\x07" * 32, MODULUS_RANGE, shape)
            ),
        ),
        "quantize_s": best_of(
            repeats,
            lambda: quantize(
                parameters_multiply([delta], N_EXAMPLES / MAX_WEIGHT),
                CLIPPING_RANGE,
                QUANTIZATION_RANGE,
            ),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=11_000_000)
    parser.add_argument("--sites", default="3,10,30")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many, primitives")
    parser.add_argument("--round-repeats", type=int, default=1, help="rounds per site count")
    parser.add_argument(
        "--num-shares", type=int, default=0, help="SecAgg+ num_shares (k + 1); 0: the full graph"
    )
    parser.add_argument(
        "--reconstruction-threshold", type=int, default=0, help="SecAgg+ t; 0: n // 2 + 1"
    )
    args = parser.parse_args()
    delta = delta_values(args.params)
    log(f"flower {flwr.__version__}: primitives on {args.params} elements")
    out: dict[str, Any] = {
        "flwr": flwr.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "params": args.params,
        "clipping_range": CLIPPING_RANGE,
        "quantization_range": QUANTIZATION_RANGE,
        "modulus_range": MODULUS_RANGE,
        "primitives": primitives(delta, args.repeats),
        "rounds": [],
    }
    # `--sites ""` measures the primitives only.
    for n in (int(s) for s in args.sites.split(",") if s.strip()):
        out["rounds"].append(
            repeated_rounds(
                n, delta, args.round_repeats, args.num_shares, args.reconstruction_threshold
            )
        )
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
