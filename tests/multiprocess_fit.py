"""One process of a multi-process fit, started by tests/test_multiprocess.py.

Usage: ``python multiprocess_fit.py PROCESS PROCESSES PORT OUTDIR CASES_JSON``.  Every
process joins ``jax.distributed`` on 127.0.0.1 (one CPU device each; JAX's CPU
collectives are gloo), loads only its own rows of each case's file with
``jnmf.data.process_rows``, fits on the mesh of all processes' devices, and writes
``OUTDIR/<case>-<process>.npz``: the gathered factors, its own rows of L and what a
process sees of the result.  Float64 (x64 on), for the 1e-10 comparison.
"""

import json
import sys
import warnings
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)


def main() -> None:
    process, processes, port = (int(x) for x in sys.argv[1:4])
    out, cases = Path(sys.argv[4]), json.loads(sys.argv[5])
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=processes, process_id=process
    )
    import jnmf
    from jnmf.data import local_rows, process_rows

    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("rows",))
    for case in cases:
        if case.get("negative_on") is not None:  # bad rows on one process: every process must raise
            block = np.array_split(np.load(case["path"]), processes)[process]
            if process == case["negative_on"]:
                block[0, 0] = -1.0
            try:
                process_rows(block, mesh)
                error = ""
            except ValueError as err:
                error = str(err)
            np.savez(out / f"{case['name']}-{process}.npz", error=error)
            continue
        if case.get("block"):  # this process's rows given in memory, not read from the file
            Y = process_rows(np.array_split(np.load(case["path"]), processes)[process], mesh)
        else:
            Y = process_rows(case["path"], mesh)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jnmf.ConvergenceWarning)
            res = jnmf.fit(
                Y,
                case["rank"],
                method=case["method"],
                key=3,
                max_iterations=case["iterations"],
                restarts=case["restarts"],
                return_all=True,
            )
        try:
            res.save(out / f"{case['name']}-{process}-spread.npz")
            save_error = ""
        except ValueError as err:
            save_error = str(err)
        whole = res.gathered()
        start, rows = local_rows(res.L)
        np.savez(
            out / f"{case['name']}-{process}.npz",
            L=whole.L,
            R=whole.R,
            all_L=whole.all_L,
            best=res.best,
            objective=res.objective,
            start=start,
            rows=rows,
            R_local=np.asarray(res.R),  # replicated: every process reads it whole
            L_addressable=res.L.is_fully_addressable,
            L_devices=len(res.L.sharding.device_set),
            save_error=save_error,
            sparse=type(Y).__name__ == "RowShardedSparse",
        )


if __name__ == "__main__":
    main()
