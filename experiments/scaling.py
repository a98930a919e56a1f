"""Scaling of row-sharded fits: measured on forced host devices, and modelled at scale (issue 13).

**Measured** (default): for each device count N (``--devices 1 2 4 8``) a fresh
process starts with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (XLA fixes
the device count when JAX starts) and times one iteration of a row-sharded fit
(``jnmf.data.sharded_operator`` / ``sharded_sparse`` on a 1-D mesh of N devices, the
operator ``jnmf.fit(Y, k, mesh=mesh)`` builds):

* dense 8192 x 2000 float32, k = 20, ``mu`` and ``hals``;
* sparse 200000 x 20000 at 0.1 % stored entries (4.0 M), k = 20, ``mu``.

Time per iteration is warm (compiled once beforehand) and taken as the difference of
two loop lengths, ``(t(3 + I) - t(3)) / I`` (the fixed cost of a call: start-up,
first and last objective, cancels), the median over ``--repeats``.  Next to it: the
bytes all-reduced per iteration, read from the compiled HLO (every ``all-reduce`` inside
the fit's ``while`` loop, its result shapes times the element size), and the model's
count for the 1-D layout (below) in bytes, which it should equal.

On this machine the N "devices" are threads of one process sharing 2 physical cores:
the table shows the structure and overhead of the collectives, not a real speed-up.
No GPU was lent to this task; ``experiments/gpu_check.sh`` is the script to run on one.

**Modelled** (``--model``; no JAX needed): words moved per device per iteration, under
the bandwidth cost of ring collectives (all-reduce ``2 (p-1)/p w``, all-gather and
reduce-scatter ``(p-1)/p w`` for a result / input of ``w`` words), for

* jnmf's 1-D row layout: Y and L split by rows over p devices, R replicated.  The L
  step needs ``R Y_b'`` (local: R is on every device) and ``R R'`` (local); the R step
  needs ``L'Y`` (k x n) and ``L'L`` (k x k): partial sums over the row blocks,
  all-reduced; plus a few objective scalars.  No all-gather: every device then updates
  the same R.
* MPI-FAUN's 2-D p_r x p_c grid (Kannan, Ballard & Park 2016, 2018): Y in
  (m/p_r) x (n/p_c) blocks, each device owning m/p rows of W (= L) and n/p columns of
  H (= R).  Per iteration: all-gather W_i among the p_c devices of a grid row, local
  ``Y_ij' W_i``, reduce-scatter over the p_r devices of a grid column; the same for H
  with the roles swapped; plus all-reduces of the k x k Gram matrices.  Words per
  device: ``2 [(p_c-1)/p_c mk/p_r + (p_r-1)/p_r nk/p_c] + 2 * 2 (p-1)/p k^2``.

at internet scale, 10^8 x 10^6 sparse at 0.01 % (10^10 stored entries), k = 100, on 64
and 1024 devices; with the memory per device under each layout.

    python experiments/scaling.py                  # measured + model (8.9 min at load 15-27)
    python experiments/scaling.py --model          # the model only (instant)
    python experiments/scaling.py --devices 1 4 --small
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

DENSE = (8192, 2000)
SPARSE = (200000, 20000, 0.001)
RANK = 20
WARM_ITERATIONS = 3  # the shorter loop of the two timed

# --------------------------------------------------------------------------- model

WORD_BYTES = 4  # float32
INDEX_BYTES = 4  # int32 row and column indices of a stored entry (jnmf's COO blocks)
INTERNET = dict(m=10**8, n=10**6, density=1e-4, k=100)
LINK_GB_PER_S = 25.0  # an assumed per-device link: 200 Gb/s (InfiniBand HDR, one port)


def ring_all_reduce(words: float, p: int) -> float:
    """Words each device sends (and receives) in a bandwidth-optimal ring all-reduce of ``words``."""
    return 2.0 * (p - 1) / p * words


def ring_all_gather(words: float, p: int) -> float:
    """Words each device receives gathering a result of ``words`` (each holds ``words / p``)."""
    return (p - 1) / p * words


ring_reduce_scatter = ring_all_gather  # same volume: an input of ``words``, ``words / p`` kept


def one_d_words(m: int, n: int, k: int, p: int, scalars: int = 3) -> dict[str, float]:
    """Words per device per iteration of jnmf's 1-D row layout (Y, L by rows; R replicated).

    Args:
        m, n, k: Y's shape and the rank.
        p: devices.
        scalars: objective scalars all-reduced per iteration.

    Returns:
        The all-reduce volumes of ``L'Y`` (k x n), ``L'L`` (k x k) and the scalars,
        and their total.
    """
    parts = {
        "L'Y (k x n)": ring_all_reduce(k * n, p),
        "L'L (k x k)": ring_all_reduce(k * k, p),
        "objective": ring_all_reduce(scalars, p),
    }
    parts["total"] = sum(parts.values())
    return parts


def two_d_words(m: int, n: int, k: int, p_r: int, p_c: int) -> dict[str, float]:
    """Words per device per iteration of MPI-FAUN's p_r x p_c grid (Kannan, Ballard & Park 2018).

    Args:
        m, n, k: Y's shape and the rank.
        p_r, p_c: the grid.

    Returns:
        The volumes of the W and H all-gathers, the two reduce-scatters, the k x k
        Gram all-reduces, and their total.
    """
    p = p_r * p_c
    parts = {
        "all-gather W_i, H_j": ring_all_gather(m * k / p_r, p_c) + ring_all_gather(n * k / p_c, p_r),
        "reduce-scatter Y'W, YH'": ring_reduce_scatter(n * k / p_c, p_r)
        + ring_reduce_scatter(m * k / p_r, p_c),
        "Gram k x k (2x)": 2 * ring_all_reduce(k * k, p),
    }
    parts["total"] = sum(parts.values())
    return parts


def best_grid(m: int, n: int, k: int, p: int) -> tuple[int, int]:
    """The p_r x p_c grid (p_r p_c = p, p_r dividing m and p_c dividing n) moving fewest words."""
    grids = [(r, p // r) for r in range(1, p + 1) if p % r == 0]
    return min(grids, key=lambda g: two_d_words(m, n, k, *g)["total"])


def memory_per_device(m: int, n: int, k: int, nnz: float, p: int, grid: tuple[int, int] | None) -> dict:
    """Bytes per device: Y's stored entries, the factors, and the buffers of one iteration.

    1-D (``grid=None``): ``nnz/p`` COO entries; L's ``m/p x k`` and all of R
    (``k x n``, replicated); buffers: the all-reduced ``L'Y`` (``k x n``) and the local
    ``R Y_b'`` (``k x m/p``).  2-D: ``nnz/p`` entries; the owned ``m/p x k`` of W and
    ``k x n/p`` of H; buffers: the gathered ``W_i`` (``m/p_r x k``, when ``p_c > 1``) and
    ``H_j`` (``k x n/p_c``, when ``p_r > 1``) and the partial products before their
    reduce-scatters (``n/p_c x k`` and ``m/p_r x k``).  A rule's own temporaries
    (MU's ``L'L R``, HALS's column sweeps) add a few copies of the factor-sized arrays;
    not counted.
    """
    entry = WORD_BYTES + 2 * INDEX_BYTES
    out = {"Y": nnz / p * entry}
    if grid is None:
        out["factors"] = (m / p * k + k * n) * WORD_BYTES
        out["buffers"] = (k * n + k * m / p) * WORD_BYTES
    else:
        p_r, p_c = grid
        gathered = (m / p_r * k if p_c > 1 else 0) + (n / p_c * k if p_r > 1 else 0)
        out["factors"] = (m / p * k + k * n / p) * WORD_BYTES
        out["buffers"] = (gathered + n / p_c * k + m / p_r * k) * WORD_BYTES
    out["total"] = sum(out.values())
    return out


def _gb(x: float) -> str:
    return f"{x / 1e9:8.3f}"


def print_model(link_gb_per_s: float = LINK_GB_PER_S) -> None:
    m, n, k, density = INTERNET["m"], INTERNET["n"], INTERNET["k"], INTERNET["density"]
    nnz = m * n * density
    print(f"\n== Communication model: {m:.0e} x {n:.0e} sparse at {density:.2%} ({nnz:.1e} stored), k = {k}")
    print("   words per device per iteration, ring collectives; float32 words (4 bytes);")
    print(f"   time at an assumed {link_gb_per_s:g} GB/s per device link, bandwidth term only (no latency)")
    head = f"{'p':>5} {'layout':<22} {'words':>10} {'GB moved':>9} {'ms @link':>9} {'vs 1-D':>7}"
    print(head)
    rows = []
    for p in (64, 1024):
        one = one_d_words(m, n, k, p)
        grid = best_grid(m, n, k, p)
        layouts = [("1-D rows (jnmf)", one["total"], None)]
        for g in sorted({grid, (int(math.isqrt(p)), p // int(math.isqrt(p)))}):
            layouts.append(
                (
                    f"2-D {g[0]} x {g[1]}" + (" (best)" if g == grid else ""),
                    two_d_words(m, n, k, *g)["total"],
                    g,
                )
            )
        for name, words, g in layouts:
            gbytes = words * WORD_BYTES
            ms = gbytes / (link_gb_per_s * 1e9) * 1e3
            print(
                f"{p:>5} {name:<22} {words:>10.3e} {_gb(gbytes):>9} {ms:>9.1f} {one['total'] / words:>6.2f}x"
            )
            rows.append((p, name, g))
    print("\n   the 1-D volume does not fall with p (every device all-reduces all of L'Y, k x n);")
    print("   the grid's does, as k (m/p_r + n/p_c); at m/n = 100 the best grid for p <= m/n is p x 1,")
    print("   which is the 1-D layout (MPI-FAUN's reduce-scatter + all-gather of H = one all-reduce).")
    flops_r = 2 * k * k * n
    print("   Work the 1-D layout replicates: every device updates all of R;")
    print(f"   MU's L'L R alone is 2 k^2 n = {flops_r:.1e} flops a device, against its share of the")
    for p in (64, 1024):
        share = 4 * nnz * k / p
        print(f"   two sparse products, 4 nnz k / p = {share:.1e} at p = {p} ({flops_r / share:.2f}x)")
    entry = WORD_BYTES + 2 * INDEX_BYTES
    print(f"\n== Memory per device (GB): Y as COO ({entry} bytes an entry), factors, iteration buffers")
    print(f"{'p':>5} {'layout':<22} {'Y':>8} {'factors':>8} {'buffers':>8} {'total':>8}")
    for p, name, g in rows:
        mem = memory_per_device(m, n, k, nnz, p, g)
        cells = " ".join(_gb(mem[key]) for key in ("Y", "factors", "buffers", "total"))
        print(f"{p:>5} {name:<22} {cells}")


# --------------------------------------------------------------------------- measured


def _hlo_computations(text: str) -> dict[str, list[str]]:
    """The compiled HLO module's computations: name -> instruction lines."""
    comps: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if (
            current is None
            and stripped.endswith("{")
            and "(" in stripped
            and not stripped.startswith("HloModule")
        ):
            name = stripped.removeprefix("ENTRY ").split(" ", 1)[0].lstrip("%")
            current = "ENTRY" if stripped.startswith("ENTRY") else name
            comps[current] = []
        elif current is not None and stripped == "}":
            current = None
        elif current is not None:
            comps[current].append(stripped)
    return comps


def _called(line: str) -> list[str]:
    import re

    names = re.findall(
        r"(?:body|condition|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)", line
    )
    for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
        names += [g.strip().lstrip("%") for g in group.split(",")]
    return names


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def loop_collectives(text: str) -> dict:
    """The collectives of a compiled module (its text), per iteration and in all.

    Per iteration: those inside the fit's loop (the ENTRY-level ``while`` with the most
    all-reduced bytes; other loops are set-up).  Each is counted once per execution of
    its computation (a collective in a loop nested inside the iteration would run more
    often; jnmf has none: its psums sit after each device's own block loop).

    Returns:
        ``allreduce_bytes`` (per iteration, the results' bytes), ``allreduce_bytes_program``
        (the whole program, each once), ``allreduce_shapes`` (per iteration) and
        ``other_collectives`` (those of other kinds inside the loop, with their shapes).
    """
    import re

    sizes = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s64": 8}
    comps = _hlo_computations(text)
    pattern = re.compile(r"= (.+?) (" + "|".join(COLLECTIVES) + r")(?:-start)?\(")

    def collectives(names):
        found = []  # (kind, dtype, dims, bytes)
        for line in (line for name in names for line in comps[name]):
            match = pattern.search(line)
            if match:
                for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)):
                    count = math.prod(int(d) for d in dims.split(",") if d)
                    found.append((match.group(2), dtype, dims, count * sizes.get(dtype, 4)))
        return found

    def closure(name, seen):
        if name in seen or name not in comps:
            return seen
        seen.add(name)
        for line in comps[name]:
            for callee in _called(line):
                closure(callee, seen)
        return seen

    def reduced(found):
        return sum(b for kind, *_, b in found if kind == "all-reduce")

    loops = []
    for line in comps.get("ENTRY", []):
        match = re.search(r" while\(.*body=%?([\w.\-]+)", line)
        if match:
            loops.append(collectives(closure(match.group(1), set())))
    loop = max(loops, key=reduced, default=[])
    return dict(
        allreduce_bytes=reduced(loop),
        allreduce_bytes_program=reduced(collectives(closure("ENTRY", set()))),
        allreduce_shapes=sorted({f"{d}[{s}]" for kind, d, s, _ in loop if kind == "all-reduce"}),
        other_collectives=sorted({f"{kind} {d}[{s}]" for kind, d, s, _ in loop if kind != "all-reduce"}),
    )


def child(args) -> None:
    """One device count: time each case and read its HLO; print one JSON line."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import scipy.sparse as sp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from jnmf.data import sharded_operator, sharded_sparse, sparse_operator
    from jnmf.driver import iterate
    from jnmf.problem import build_problem
    from jnmf.rules import make_rule

    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("rows",))
    rng = np.random.default_rng(0)
    scale = 8 if args.small else 1
    m, n = DENSE[0] // scale, DENSE[1] // scale
    Y = rng.random((m, n), dtype=np.float32)
    ms, ns, density = SPARSE[0] // scale, SPARSE[1] // scale, SPARSE[2]
    # a Generator, not a seed: with a legacy RandomState scipy draws the positions from a
    # permutation of all m n cells (a 32 GB temporary at 200000 x 20000)
    Ysp = sp.random(ms, ns, density=density, format="csr", dtype=np.float32, random_state=rng)
    cases = {
        "dense mu": ("mu", lambda: sharded_operator("Y", Y, mesh), (m, n), m * n),
        "dense hals": ("hals", lambda: sharded_operator("Y", Y, mesh), (m, n), m * n),
        "sparse mu": ("mu", lambda: sharded_sparse(sparse_operator("Y", Ysp), mesh), (ms, ns), Ysp.nnz),
    }
    # MU and HALS alike: the iteration count is traced, so both loop lengths share one program
    run = eqx.filter_jit(
        lambda rule, problem, state, T: iterate(
            rule, problem, state, max_iterations=T, tol=0.0, history_size=8
        )
    )
    out = {"devices": len(devices), "cases": {}}
    for name, (method, make, (rows, cols), entries) in cases.items():
        if name not in args.cases:
            continue
        data = make()
        problem = build_problem(data, RANK)
        rule = make_rule(method)
        L0 = jax.device_put(
            jnp.asarray(rng.random((rows, RANK), dtype=np.float32) + 0.1),
            NamedSharding(mesh, P("rows", None)),
        )
        R0 = jax.device_put(
            jnp.asarray(rng.random((RANK, cols), dtype=np.float32) + 0.1), NamedSharding(mesh, P())
        )
        state = rule.init(problem, L0, R0)
        short = jnp.asarray(WARM_ITERATIONS, jnp.int32)
        long = jnp.asarray(WARM_ITERATIONS + args.iterations, jnp.int32)
        compiled = run.lower(rule, problem, state, short).compile()
        text = getattr(compiled, "compiled", compiled).as_text()  # equinox wraps jax's Compiled
        found = loop_collectives(text)
        jax.block_until_ready(compiled(rule, problem, state, long))  # warm up

        def seconds(T):
            t = time.perf_counter()
            jax.block_until_ready(compiled(rule, problem, state, T))
            return time.perf_counter() - t

        per = []
        for _ in range(args.repeats):
            per.append((seconds(long) - seconds(short)) / args.iterations)
        out["cases"][name] = dict(
            ms=1e3 * statistics.median(per),
            spread=[1e3 * min(per), 1e3 * max(per)],
            shape=[rows, cols],
            entries=int(entries),
            **found,
            model_bytes=(RANK * cols + RANK * RANK) * WORD_BYTES,  # L'Y and L'L, before the ring's factor
        )
    print("JSON" + json.dumps(out), flush=True)


def measure(args) -> None:
    load = open("/proc/loadavg").read().split()[:3]
    print(f"load average at start: {' '.join(load)}; cores: {os.cpu_count()}")
    print("forced host devices (XLA_FLAGS=--xla_force_host_platform_device_count=N): the N devices")
    print("share this machine's cores, so this measures the collectives' structure and overhead,")
    print("not a real speed-up.  No GPU was lent to this task: see experiments/gpu_check.sh.")
    results = []
    for N in args.devices:
        env = dict(os.environ)
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={N}"])
        env["JAX_PLATFORMS"] = "cpu"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        cmd = [sys.executable, __file__, "--child", "--iterations", str(args.iterations)]
        cmd += ["--repeats", str(args.repeats), "--cases", *args.cases] + (["--small"] if args.small else [])
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("JSON")]
        if proc.returncode or not lines:
            print(proc.stdout[-2000:], proc.stderr[-4000:])
            raise SystemExit(f"N={N}: the child process failed (exit {proc.returncode})")
        results.append(json.loads(lines[0][4:]))
        print(f"  N={N}: {time.perf_counter() - t:.0f} s", flush=True)
    print()
    head = f"{'case':<12} {'N':>2} {'ms/it':>8} {'[min, max]':>16} {'vs N=1':>7}"
    print(f"{head} {'all-reduce B/it':>16} {'1-D model B':>12}  all-reduced shapes; other collectives")
    for name in args.cases:
        base = next((r["cases"][name]["ms"] for r in results if r["devices"] == 1), None)
        for r in results:
            c = r["cases"][name]
            speed = f"{base / c['ms']:6.2f}x" if base else "   -"
            lo, hi = c["spread"]
            model = c["model_bytes"]
            shapes = " ".join(c["allreduce_shapes"]) or "-"
            other = ", ".join(c["other_collectives"]) or "none"
            print(
                f"{name:<12} {r['devices']:>2} {c['ms']:>8.1f} {f'[{lo:.1f}, {hi:.1f}]':>16} {speed:>7}"
                f" {c['allreduce_bytes']:>16,} {model:>12,.0f}  {shapes}; {other}"
            )
    print("(all-reduce B/it: the result bytes of the all-reduces inside the fit's loop, from the")
    print(" compiled HLO; a ring moves 2 (N-1)/N times that per device.  1-D model B: 4 (k n + k^2) bytes,")
    print(" L'Y and L'L, without the objective's scalars.  At N=1 the shard_map's psum of L'Y stays in")
    print(" the program as an all-reduce over one device, which moves nothing.  Other collectives:")
    print(" any all-gather, reduce-scatter, all-to-all or collective-permute in the loop, with its")
    print(" result shape; one inside a nested loop runs once per trip of that loop.)")
    load = open("/proc/loadavg").read().split()[:3]
    print(f"load average at end: {' '.join(load)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="store_true", help="print the communication model only")
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--cases", nargs="+", default=["dense mu", "dense hals", "sparse mu"])
    ap.add_argument("--iterations", type=int, default=10, help="I: the longer loop runs 3 + I iterations")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--small", action="store_true", help="8x smaller matrices (a quick check)")
    ap.add_argument("--link", type=float, default=LINK_GB_PER_S, help="assumed GB/s per device (model)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per device count")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if not args.model:
        measure(args)
    print_model(args.link)


if __name__ == "__main__":
    main()
