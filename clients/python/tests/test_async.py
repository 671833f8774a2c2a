"""The async API: the same SQL functions through the async pool."""

import asyncio

import pytest

from pyclient_harness import wait_until

from eventic import Eventic, Record, RecordNotFoundError, StaleRecordError


class Memo(Record):
    text: str
    n: int = 0

    def bump(self) -> None:
        self.n = self.n + 1


def test_async_records_and_enqueue(ev, sql):
    async def scenario():
        memo = await Memo.acreate(text="async")
        assert memo.version == 0
        assert await memo.aset(text="async v1", n=2) == 1
        stale = await Memo.ahydrate(memo.id, 0)
        with pytest.raises(StaleRecordError):
            await stale.aset(text="stale")
        assert [h.version for h in await memo.ahistory()] == [0, 1]
        assert await memo.adiff(0, 1) == {"n": {"old": 0, "new": 2}, "text": {"old": "async", "new": "async v1"}}
        again = await Memo.ahydrate(str(memo.id))
        assert again.model_dump() == memo.model_dump()
        # concurrent async writers of different records
        memos = await asyncio.gather(*(Memo.acreate(text=f"m{i}") for i in range(10)))
        assert len({m.id for m in memos}) == 10
        await Eventic.queue("memo").aenqueue("eventic.delete(uuid)", memos[0].id)
        assert await memo.adelete() == 2
        with pytest.raises(RecordNotFoundError):
            await Memo.ahydrate(memo.id)
        return memos[0].id

    first = asyncio.run(scenario())
    # the SQL job enqueued through the async pool ran in the extension's worker
    import time
    deadline = time.monotonic() + 30
    while sql.execute("SELECT count(*) FROM eventic.history(%s) WHERE deleted", (first,)).fetchone() != (1,):
        assert time.monotonic() < deadline
        time.sleep(0.05)


@Eventic.job()
async def async_job(text: str) -> None:
    """An async job: runs on its worker thread's event loop, with that loop's async pool."""
    memo = await Memo.acreate(text=text)
    await memo.aset(n=1)


def test_async_job_functions_run_in_the_workers(ev, sql):
    q = Eventic.queue("memo_jobs")
    for i in range(3):
        q.enqueue(async_job, f"from a job {i}")
    Eventic.launch(threads=2, queues=["memo_jobs"], workflows=False)
    done = "SELECT count(*) FROM eventic.latest WHERE class_type = 'Memo' AND version = 1 AND data->>'text' LIKE 'from a job%'"
    assert wait_until(lambda: sql.execute(done).fetchone() == (3,))
    Eventic.shutdown()  # each worker thread closes its loop's pool
