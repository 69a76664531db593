"""The request log's ring buffer, filters and subscribers (emulator/request_log.py)."""

from __future__ import annotations

from emulator.request_log import RequestLog


def _add(log: RequestLog, **over: object) -> None:
    fields = {"time_ms": 1000, "port": "api", "method": "GET", "path": "/sandboxes", "query": "",
              "sandbox": None, "status": 200, "latency_ms": 1.0}
    fields.update(over)
    log.add(**fields)


def test_bounded_oldest_first_out() -> None:
    log = RequestLog(size=3)
    for i in range(5):
        _add(log, time_ms=1000 + i)
    assert [e.seq for e in log.query()] == [3, 4, 5]
    assert [e.seq for e in log.query(limit=2)] == [4, 5]
    assert log.query(limit=0) == []


def test_filters() -> None:
    log = RequestLog()
    _add(log, sandbox="a", status=200, method="POST", time_ms=10)
    _add(log, sandbox="a", status=404, time_ms=20, port="proxy")
    _add(log, sandbox="b", status=503, time_ms=30, path="/api/v1/processes")
    assert [e.seq for e in log.query(sandbox="a")] == [1, 2]
    assert [e.seq for e in log.query(method="post")] == [1]
    assert [e.seq for e in log.query(status="4xx")] == [2]
    assert [e.seq for e in log.query(status="503")] == [3]
    assert [e.seq for e in log.query(since=20)] == [2, 3]
    assert [e.seq for e in log.query(after=2)] == [3]
    assert [e.seq for e in log.query(port="proxy")] == [2]
    assert [e.seq for e in log.query(path="processes")] == [3]


async def test_subscribers_get_new_entries_and_the_end() -> None:
    log = RequestLog()
    seen = []
    log.listeners.append(lambda e: seen.append(e.seq))
    async with log.subscribe(backlog=1) as queue:
        _add(log)
        _add(log)  # the queue is full: dropped for this reader, counted
        assert log.dropped == 1
        first = await queue.get()
        assert first is not None and first.seq == 1
        _add(log)
        log.close()  # the end displaces the unread third entry: a full reader still stops
        assert await queue.get() is None and log.dropped == 2
    assert seen == [1, 2, 3]
