"""Data-parallel training on two local gloo ranks under torchrun (tests/two_ranks.py), against one process."""

import os
import subprocess
import sys

import pytest
import torch

import infcomp
from infcomp.distributed import Solo, join, rank_seed
from infcomp_models.examples import poisson_branching

import two_ranks

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two ranks of tests/two_ranks.py wrote, and the folder it wrote to."""
    out = tmp_path_factory.mktemp("two_ranks")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           os.path.join(HERE, "two_ranks.py"), str(out)], env={**env, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)], out


def test_a_plain_process_is_solo():
    group = join("cpu")
    assert isinstance(group, Solo) and group.world_size == 1 and group.is_main
    assert rank_seed(5, 0) == 5 and len({rank_seed(5, r) for r in range(4)}) == 4


def test_ranks_agree_on_one_address_table_and_the_stop(ranks):
    results, _ = ranks
    for r in results:
        assert r["agree"] == {"stop": True, "counts": (3, 20, 1), "names": ["a", "b", "c"], "seconds": 0.5,
                              "failure": "E: on rank 1", "stalled": False}
        assert r["ended"] == [False, True]  # one rank's share ended: the run goes on; both: it stops
        assert r["clash"] is not None and "'a'" in r["clash"] and "rank 1" in r["clash"]
        assert r["known_clash"] == "rank 1: site 'a' changed shape"  # raised on both ranks, naming the one


def test_a_rank_whose_share_ends_first_steps_on_until_every_rank_is_done(ranks):
    results, _ = ranks
    half = two_ranks.EXACT_BATCH // 2
    for r in results:
        assert r["uneven"] == {"steps": two_ranks.EXACT_STEPS, "trained": (two_ranks.EXACT_STEPS + 1) * half,
                               "stopped_waiting": False}


def test_two_ranks_step_as_one_process_on_the_whole_batch(ranks):
    results, _ = ranks
    a, b = results[0]["exact"], results[1]["exact"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    trainer, sampler = two_ranks.exact_trainer()
    trainer.run(iter([(batch, True) for batch in two_ranks.exact_batches(sampler)]))
    one = trainer.guide.network.state_dict()
    assert one.keys() == a.keys()
    start = two_ranks.exact_trainer()[0].guide.network.state_dict()
    moved = [k for k in one if torch.is_tensor(one[k]) and not torch.equal(one[k], start.get(k, one[k]))]
    assert len(moved) > 10  # the steps did change the network
    for k in one:
        if torch.is_tensor(one[k]):
            torch.testing.assert_close(a[k], one[k], rtol=1e-4, atol=1e-5, msg=f"parameter {k}")


def test_compiled_ranks_end_identical_having_grown_the_same_addresses(ranks):
    results, _ = ranks
    a, b = results[0]["compile"], results[1]["compile"]
    assert a["addresses"] == b["addresses"]
    assert len(a["addresses"]) > len(a["addresses_at_start"])  # addresses were met, one rank or the other first
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"] if torch.is_tensor(a["state"][k]))
    assert a["world_size"] == b["world_size"] == 2
    assert a["norms"] and a["norms"] == b["norms"]  # the gradient balancer's running norms, one table
    assert a["traces_trained"] == b["traces_trained"] == a["traces"] >= two_ranks.COMPILE_TRACES


def test_rank_0_s_refusal_of_the_checkpoint_is_raised_on_every_rank(ranks):
    results, _ = ranks
    assert "already exists" in results[0]["refused"]
    assert results[1]["refused"] == f"rank 0 refused the run: {results[0]['refused']}"


def test_loss_per_trace_of_two_ranks_matches_one_process_at_twice_the_batch(ranks):
    results, _ = ranks
    one = infcomp.compile(poisson_branching, "y", two_ranks.COMPILE_TRACES, batch_size=two_ranks.COMPILE_BATCH,
                          workers=0, seed=3, validation_size=16, progress=False)
    two = results[0]["compile"]["validation_loss"]  # the same validation set: drawn from the run's seed
    loss = one.last_run.validation_loss
    assert abs(two - loss) < 0.05 * abs(loss) + 0.02, (two, loss)


def test_a_checkpoint_of_two_ranks_resumes_in_one_process(ranks):
    results, out = ranks
    path = out / "branching.pt"
    guide = infcomp.load(path)
    saved = results[0]["compile"]
    assert guide.addresses == saved["addresses"] and guide.metadata["world_size"] == 2
    assert all(torch.equal(v, saved["state"][k]) for k, v in guide.network.state_dict().items() if torch.is_tensor(v))
    before = guide.traces_trained
    guide = infcomp.compile(poisson_branching, "y", 256, guide=guide, checkpoint=path, workers=0, seed=4,
                            validation_size=16, progress=False)
    assert guide.traces_trained == before + 256 and guide.metadata["world_size"] == 1
    assert infcomp.load(path).traces_trained == before + 256


def test_distributed_false_trains_alone_where_the_launcher_s_environment_asks_for_ranks(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2 asks for distributed training, but RANK"):
        infcomp.compile(poisson_branching, "y", 64, workers=0, validation_size=8, progress=False)
    guide = infcomp.compile(poisson_branching, "y", 64, workers=0, validation_size=8, progress=False, distributed=False)
    assert guide.metadata["world_size"] == 1 and guide.traces_trained == 64


def test_a_batch_that_meets_a_known_address_as_another_site_is_an_error():
    import pyro
    import pyro.distributions as dist

    from infcomp.data import collate
    from infcomp.distributed import Say
    from infcomp.traces import PriorSampler
    from infcomp.train import _clash

    def wide(y=None):
        pyro.sample("n", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    guide = infcomp.compile(poisson_branching, "y", 64, workers=0, validation_size=8, progress=False)
    sampler = PriorSampler(wide, "y")
    batch = collate([sampler.sample() for _ in range(4)], sampler.specs)
    message = _clash(batch, guide.network.specs)
    assert "site 'n'" in message
    with pytest.raises(ValueError, match="site 'n'"):
        Solo().agree(Say(False, False, False, (4, 4, 0), [], 0.0, "", message))
