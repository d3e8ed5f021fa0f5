"""The budget ledger: reserve / commit / release, the quota guarantee, idempotent commits,
saved state across crashes and resumes, and one Ray actor charged by concurrent tasks."""

import json
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pyarrow.fs import FileSelector

from pipeline.scheduler.ledger import Ledger, clear_state, state_exists
from pipeline.scheduler.runtime import ledger_actor, ledger_name
from pipeline.storage import StorageArgs


def test_reserve_commit_release():
    led = Ledger(100)
    assert led.reserve("a", 60) and led.reserved == 60 and led.remaining == 40
    assert not led.reserve("b", 41)  # 60 + 41 > 100
    assert led.reserve("b", 40) and led.remaining == 0
    assert led.commit("a", 50) == 50  # the 10 not used go back
    assert (led.spent, led.reserved, led.remaining) == (50, 40, 10)
    led.release("b")
    assert (led.spent, led.reserved, led.remaining) == (50, 0, 50)
    led.release("b")  # no-op
    assert led.totals() == {"quota": 100, "spent": 50, "reserved": 0, "remaining": 50,
                            "committed": 1, "overrun": 0, "unit": "flops", "flops_spent": 0,
                            "flops_reserved": 0}


def test_a_key_is_paid_once():
    led = Ledger(100)
    assert led.reserve("a", 30)
    assert led.commit("a", 30) == 30
    assert led.commit("a", 30) == 0  # a retried commit: no-op
    assert not led.reserve("a", 30) and led.is_committed("a")  # a retried row: refused
    assert led.spent == 30 and led.reserved == 0


def test_commit_above_the_reserve_is_charged_the_reserve_and_shows_as_overrun():
    led = Ledger(100)
    led.reserve("a", 30)
    assert led.commit("a", 45) == 30
    assert led.spent == 30 and led.overrun == 15


def test_re_reserving_replaces_the_hold_only_if_it_fits():
    led = Ledger(100)
    led.reserve("a", 30)
    led.reserve("b", 50)
    assert led.reserve("a", 50) and led.reserved == 100  # 30 -> 50
    assert not led.reserve("a", 51) and led.reserved == 100  # kept at 50
    assert led.reserve("a", 10) and led.reserved == 60


def test_bad_calls():
    led = Ledger(100)
    with pytest.raises(KeyError, match="reserve first"):
        led.commit("never", 1)
    with pytest.raises(ValueError, match="reserve must be"):
        led.reserve("a", -1)
    with pytest.raises(TypeError, match="strings"):
        led.reserve(7, 1)
    with pytest.raises(ValueError, match="quota_flops"):
        Ledger(float("nan"))


def test_fractional_flops_round_up():
    led = Ledger(10)
    assert led.reserve("a", 9.2) and led.reserved == 10
    assert not led.reserve("b", 0.1)


def test_state_survives_a_restart_and_a_resume_does_not_spend_twice(tmp_path):
    path = tmp_path / "ledger.json"
    led = Ledger(1000, path)
    for key, flops in [("r1", 100), ("r2", 200)]:
        assert led.reserve(key, flops)
        led.commit(key, flops)
    led.reserve("open", 300)  # a row in flight when the job dies
    del led  # no save(): a crash
    led = Ledger(1000, path)
    assert (led.spent, led.reserved, led.remaining) == (300, 0, 700)
    assert not led.reserve("r1", 100) and led.commit("r1", 100) == 0
    assert led.reserve("open", 300)  # its reservation did not survive; the row may run


def test_compaction_and_a_crash_between_snapshot_and_journal_cleanup(tmp_path):
    path = tmp_path / "ledger.json"
    led = Ledger(1000, path, compact_every=2)
    for i in range(5):
        led.reserve(f"r{i}", 10)
        led.commit(f"r{i}", 10)
    snapshot = json.loads(path.read_text())
    assert snapshot["spent"] == 40 and len(led.journal_path.read_text().splitlines()) == 1
    # a crash after os.replace but before the journal was emptied: all its lines replay
    journal = "".join(json.dumps({"key": f"r{i}", "flops": 10}) + "\n" for i in range(5))
    led.journal_path.write_text(journal)
    assert Ledger(1000, path).spent == 50


def test_a_torn_journal_line_is_dropped_and_does_not_eat_later_commits(tmp_path):
    path = tmp_path / "ledger.json"
    led = Ledger(1000, path)
    led.reserve("a", 10)
    led.commit("a", 10)
    with open(led.journal_path, "a") as f:
        f.write('{"key": "b", "flo')  # the process died mid-write: commit("b") never returned
    led = Ledger(1000, path)
    assert led.spent == 10 and not led.is_committed("b")
    led.reserve("c", 5)
    led.commit("c", 5)
    assert Ledger(1000, path).spent == 15


def test_a_quota_below_the_saved_spend_is_refused(tmp_path):
    path = tmp_path / "ledger.json"
    led = Ledger(1000, path)
    led.reserve("a", 600)
    led.commit("a", 600)
    with pytest.raises(ValueError, match="more than its quota 500"):
        Ledger(500, path)
    assert Ledger(2000, path).remaining == 1400  # a raised quota continues from the spend


def test_a_state_reloads_only_in_its_own_unit(tmp_path):
    """Microseconds of measured time and FLOPs never mix in one saved spend; a state saved
    before ledgers had units counts FLOPs."""
    path = tmp_path / "ledger.json"
    led = Ledger(10_000_000, path, unit="us")
    led.reserve("a", 2_500_000)
    led.commit("a", 3_000_000)  # measured past its reservation
    led.save()
    assert json.loads(path.read_text())["unit"] == "us"
    again = Ledger(10_000_000, path, unit="us")
    assert (again.spent, again.overrun, again.flops_spent) == (2_500_000, 500_000, 0)
    again.reserve("b", 1_000_000, 5e9)  # 5e9 FLOPs behind the time: kept across a restart
    again.commit("b", 1_000_000, 4e9)
    assert Ledger(10_000_000, path, unit="us").flops_spent == 4e9  # from the journal
    again.save()
    assert Ledger(10_000_000, path, unit="us").flops_spent == 4e9  # from the snapshot
    with pytest.raises(ValueError, match="counts us, not flops"):
        Ledger(10_000_000, path)
    old = json.loads(path.read_text())
    del old["unit"]
    path.write_text(json.dumps(old))
    assert Ledger(10_000_000, path).spent == 3_500_000
    with pytest.raises(ValueError, match="counts flops, not us"):
        Ledger(10_000_000, path, unit="us")


def test_a_state_of_time_reloads_only_with_the_same_work_behind_it(tmp_path):
    """The work a ledger of time keeps behind it (FLOPs, or a time profile's microseconds)
    does not change between runs: the pacer divides one by the other. A state saved
    before profiles kept FLOPs."""
    from pipeline.scheduler.ledger import WorkMismatch

    path = tmp_path / "ledger.json"
    led = Ledger(10_000_000, path, unit="us", work="profiled_us")
    assert led.reserve("a", 2_000_000, 1_500_000)
    led.commit("a", 1_000_000, 1_200_000)
    led.save()
    assert json.loads(path.read_text())["work"] == "profiled_us"
    assert Ledger(10_000_000, path, unit="us", work="profiled_us").flops_spent == 1_200_000
    with pytest.raises(WorkMismatch, match="keeps profiled_us behind its time, not flops"):
        Ledger(10_000_000, path, unit="us")
    old = json.loads(path.read_text())
    del old["work"]
    path.write_text(json.dumps(old))
    assert Ledger(10_000_000, path, unit="us").spent == 1_000_000
    with pytest.raises(WorkMismatch, match="keeps flops behind its time, not profiled_us"):
        Ledger(10_000_000, path, unit="us", work="profiled_us")
    with pytest.raises(ValueError, match="ledger work must be one of"):
        Ledger(1, work="seconds")
    with pytest.raises(ValueError, match="unit must be one of"):
        Ledger(1, unit="seconds")


def test_time_past_a_hold_counts_against_later_holds():
    """A commit above its hold is charged the hold; the rest is overrun, work that was done
    all the same, so it takes from what later holds may get (and survives a restart)."""
    led = Ledger(100)
    assert led.reserve("a", 50)
    assert led.commit("a", 80) == 50 and led.overrun == 30 and led.remaining == 20
    assert not led.reserve("b", 21) and led.reserve("b", 20)
    assert led.spent + led.reserved + led.overrun == 100


ops = st.lists(st.tuples(st.sampled_from(["reserve", "commit", "release", "crash", "save"]),
                         st.integers(0, 7), st.integers(0, 60)), max_size=60)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 200), st.integers(1, 4), ops)
@example(0, 1, [("reserve", 1, 0), ("commit", 1, 1), ("reserve", 0, 0)])  # an overrun past Q
def test_random_sequences_keep_the_guarantee(quota, compact_every, sequence):
    """Against a plain model: spent + reserved <= quota after every step, and a commit past
    its hold (overrun) counts against later holds; a crash (drop the object, reload from
    disk) keeps every commit and the overrun and no reservation; a key is charged once."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "state.json"
        led = Ledger(quota, path, compact_every=compact_every)
        charged, holds, overrun = {}, {}, 0  # the model
        for op, k, flops in sequence:
            key = f"k{k}"
            if op == "reserve":
                ok = key not in charged and (sum(charged.values()) + sum(holds.values())
                                             + overrun - holds.get(key, 0) + flops <= quota)
                assert led.reserve(key, flops) == ok
                if ok:
                    holds[key] = flops
            elif op == "commit" and (key in holds or key in charged):
                expect = 0 if key in charged else min(flops, holds[key])
                overrun += 0 if key in charged else max(0, flops - holds.pop(key))
                assert led.commit(key, flops) == expect
                charged.setdefault(key, expect)
            elif op == "release":
                led.release(key)
                holds.pop(key, None)
            elif op == "crash":
                led, holds = Ledger(quota, path, compact_every=compact_every), {}
            elif op == "save":
                led.save()
            assert led.spent + led.reserved <= quota
            assert (led.spent, led.reserved) == (sum(charged.values()), sum(holds.values()))
            assert led.overrun == overrun
        reloaded = Ledger(quota, path)
        assert reloaded.spent == sum(charged.values())
        assert all(reloaded.is_committed(k) for k in charged)


# ------------------------------------------------------------------ the Ray actor


def test_concurrent_ray_tasks_charge_one_ledger_exactly(ray_local, tmp_path):
    ray = ray_local
    job = f"test-{uuid.uuid4().hex[:8]}"
    quota, state = 10_000, str(tmp_path / "ledger.json")
    ledger = ledger_actor(job, quota, state)
    assert ledger_actor(job, quota, state)._actor_id == ledger._actor_id
    with pytest.raises(ValueError, match="running with quota"):
        ledger_actor(job, quota + 1, state)

    @ray.remote(num_cpus=0.25)
    def worker(ledger, worker_id: int) -> int:
        paid = 0
        for i in range(60):  # keys overlap between workers: retried rows
            key = f"row{(worker_id * 30 + i) % 150}"
            if ray.get(ledger.reserve.remote(key, 100)):
                paid += ray.get(ledger.commit.remote(key, 90))
        return paid

    paid = sum(ray.get([worker.remote(ledger, w) for w in range(4)]))
    totals = ray.get(ledger.totals.remote())
    # Every charge is counted once: what the workers were told they paid is the spend.
    assert totals["spent"] == paid == 90 * totals["committed"] and totals["reserved"] == 0
    # 150 rows at 90 would cost 13,500, so some reserve of 100 was refused, when spent plus
    # at most 3 other holds of 100 plus 100 went over the quota; spend only grew after that.
    assert quota - 400 < totals["spent"] <= quota
    ray.kill(ledger)  # the job dies; a resumed job's ledger starts from the saved spend
    _wait_until_gone(ray, ledger_name(job))
    resumed = ledger_actor(job, quota, state)
    assert ray.get(resumed.totals.remote())["spent"] == totals["spent"]
    # a row paid before the crash (which rows got paid depends on how the workers raced)
    paid_key = next(iter(ray.get(resumed.get.remote("_committed"))))
    assert not ray.get(resumed.reserve.remote(paid_key, 1))
    ray.kill(resumed)


def _wait_until_gone(ray, name: str) -> None:
    for _ in range(300):
        try:
            ray.get_actor(name)
        except ValueError:
            return
        time.sleep(0.1)
    raise AssertionError(f"actor {name} still registered")


# ------------------------------------------------------------- state in object storage (S3)

def test_a_state_on_s3_survives_a_crash_compacts_and_clears(s3_bucket):
    """Object storage cannot append: each commit_many is one journal object, written before
    it returns; a snapshot names the last journal object it holds and those go. Against the
    moto S3 server on loopback."""
    endpoint, bucket, fs = s3_bucket
    storage = StorageArgs(endpoint_url=endpoint)
    url = f"s3://{bucket}/job/ledger.json"
    assert not state_exists(url, storage)
    led = Ledger(1000, url, compact_every=5, storage=storage)
    journal = f"{bucket}/job/ledger.json.journal"
    led.reserve_many([(f"r{i}", 10) for i in range(3)])
    assert led.commit_many([(f"r{i}", 10) for i in range(3)]) == [10, 10, 10]
    objects = lambda: sorted(i.path.rsplit("/", 1)[-1] for i in fs.get_file_info(  # noqa: E731
        FileSelector(journal, allow_not_found=True)))
    assert objects() == ["000000000001.jsonl"]  # one batch, one object
    led.reserve("open", 300)  # in flight when the job dies
    del led  # no save(): a crash
    led = Ledger(1000, url, compact_every=5, storage=storage)
    assert (led.spent, led.remaining, led.is_committed("r2")) == (30, 970, True)
    assert objects() == [] and json.loads(read(fs, f"{bucket}/job/ledger.json"))["spent"] == 30
    for i in range(3, 9):  # one at a time: an object each, a snapshot at the fifth
        led.reserve(f"r{i}", 10)
        led.commit(f"r{i}", 10)
    snapshot = json.loads(read(fs, f"{bucket}/job/ledger.json"))
    assert snapshot["spent"] == 80 and len(objects()) == 1
    # a crash after the snapshot but before its journal objects went: they replay by key
    with fs.open_output_stream(f"{journal}/{snapshot['journal_seq']:012d}.jsonl") as f:
        f.write(b'{"key": "r3", "flops": 10}\n')
    with fs.open_output_stream(f"{journal}/999999999999.jsonl") as f:
        f.write(b'{"key": "late", "flops": 5}\n{"key": "torn", "flo')
    again = Ledger(1000, url, storage=storage)
    assert again.spent == 95 and again.is_committed("late") and not again.is_committed("torn")
    assert state_exists(url, storage)
    clear_state(url, storage)
    assert not state_exists(url, storage) and Ledger(1000, url, storage=storage).spent == 0


def read(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()
