"""The error-log guard of tests/conftest.py: a test that logs an error fails unless it says it expects one."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()


def test_a_test_that_logs_an_error_fails(pytester, allow_error_logs):
    # The inner run shares this process's logging: its errors are this test's subject.
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import logging

        import pytest

        log = logging.getLogger("seqbuild")


        def test_logs_an_error():
            log.error("something went wrong")


        @pytest.fixture
        def noisy():
            log.error("broken in setup")


        def test_logs_an_error_in_setup(noisy):
            pass


        def test_logs_a_warning():
            log.warning("only a warning")


        def test_expects_its_error(allow_error_logs):
            log.error("bad input, on purpose")
            assert [r.getMessage() for r in allow_error_logs.records] == ["bad input, on purpose"]
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=4, errors=2)
    out = result.stdout.str()
    assert "ERROR at teardown of test_logs_an_error _" in out
    assert "unexpected error logs: ['something went wrong']" in out
    assert "ERROR at teardown of test_logs_an_error_in_setup" in out
    assert "unexpected error logs: ['broken in setup']" in out
    assert "test_logs_a_warning" not in out and "test_expects_its_error" not in out
