"""wait_for is bounded: it returns the first truthy value, and a timeout names what was awaited,
the last error and the dump."""

from __future__ import annotations

import time

import pytest

from e2e.util import WaitTimeout, wait_for


def test_wait_for_returns_the_first_truthy_value() -> None:
    calls = iter([None, 0, {"ready": True}])
    assert wait_for(lambda: next(calls), 5, "a value", interval=0.01) == {"ready": True}


def test_wait_for_treats_exceptions_as_not_yet() -> None:
    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise KeyError("not there yet")
        return "there"

    assert wait_for(flaky, 5, "the object", interval=0.01) == "there"


def test_wait_for_timeout_reports_what_last_error_and_dump() -> None:
    def never() -> None:
        raise RuntimeError("pod pending")

    t0 = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        wait_for(never, 0.3, "Deployment web Available", dump=lambda: "NAME READY\nweb 0/1", interval=0.05)
    assert time.monotonic() - t0 < 2, "the wait is bounded"
    text = str(info.value)
    assert "Deployment web Available" in text and "0.3s" in text
    assert "RuntimeError: pod pending" in text
    assert "web 0/1" in text


def test_a_failing_dump_does_not_hide_the_timeout() -> None:
    def broken_dump() -> str:
        raise OSError("kubectl gone")

    with pytest.raises(WaitTimeout, match="dump failed: kubectl gone"):
        wait_for(lambda: False, 0.1, "anything", dump=broken_dump, interval=0.05)
