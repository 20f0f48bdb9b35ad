"""Two gloo CPU processes, each with its shard of the data, give the λ_max of one process."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.cases import make_case


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(n: int):
    from geomkit.geometry.hessian import hessian_eigs
    from geomkit.geometry.spectrum import hutchinson_trace

    case = make_case("vit1", n=n)
    r = hessian_eigs(case.model, case.inputs, case.targets, blocks=("paper",), tol=1e-10,
                     batch_size=4, strategy="stream", smallest=True)
    t = hutchinson_trace(case.model, case.inputs, case.targets, n_probes=4, batch_size=4)
    return {
        "lmax": {b: e.lambda_max for b, e in r.blocks.items()},
        "lmin": {b: e.lambda_min for b, e in r.blocks.items()},
        "trace": t["whole"].trace,
    }


def _worker(rank: int, world: int, port: int, n: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from geomkit import distributed

    assert distributed.init()
    try:
        res = _run(n)
        res["shard"] = len(distributed.shard_range(n))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(res, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path):
    n = 11  # uneven shards (6/5) and uneven batches (4/2, 4/1)
    mp.spawn(_worker, args=(2, _free_port(), n, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["shard"] for r in ranks] == [6, 5]
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _run(n)
    finally:
        torch.set_num_threads(n_threads)
    for r in ranks:
        for key in ("lmax", "lmin"):
            for b, v in single[key].items():
                scale = max(abs(v), 1e-3 * abs(single["lmax"]["whole"]))
                assert abs(r[key][b] - v) <= 1e-9 * scale, (key, b)
        assert abs(r["trace"] - single["trace"]) <= 1e-9 * abs(single["trace"])
    assert ranks[0] == {**ranks[1], "shard": 6}  # every rank holds the same answer
