"""The one validator of names from outside (shared.names)."""

from __future__ import annotations

import pytest

from shared.errors import InvalidInputError
from shared.names import (UnsafeNameError, check_blob_name, check_file_name, check_job_id, check_run_id, check_shard_id,
                          shown)

HOSTILE = ["", "/etc/passwd", "a////////../../../../tmp/x/evil.py", "../videos-out/alice/private.png", "a/./b", "a/../b",
           "a//b", "a/", ".", "..", "a\\..\\b", "a\x00b", "clip\n.mp4", "x\u202e4pm.exe", "a" * 1025]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_blob_names_are_refused(name):
    with pytest.raises(UnsafeNameError):
        check_blob_name(name, "blob name")


@pytest.mark.parametrize("name", ["clip.mp4", "candy/trip.mp4", "a b/ç é.mov", "jobs/stylize-0/styled/batch-00001.a1.mp4"])
def test_plain_blob_names_pass(name):
    assert check_blob_name(name, "blob name") == name


def test_a_refused_name_is_a_non_retryable_input_error_with_a_printable_bounded_quote():
    with pytest.raises(InvalidInputError) as caught:
        check_blob_name("x\n" * 600, "upload name")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200
    assert shown("a\tb") == "'a?b'"


def test_length_bound_is_the_callers():
    check_blob_name("a" * 400, "upload", max_chars=400)
    with pytest.raises(UnsafeNameError, match="401 characters"):
        check_blob_name("a" * 401, "upload", max_chars=400)


@pytest.mark.parametrize("name", ["m.npz", "dev-1_s.0a1b2c.npz"])
def test_plain_file_names(name):
    assert check_file_name(name, "model file", (".npz",)) == name


@pytest.mark.parametrize("name", ["a/b.npz", "../x.npz", ".hidden.npz", "x..npz", "m.py", "m.npz\n", "a" * 200 + ".npz"])
def test_file_names_that_are_not_plain_are_refused(name):
    with pytest.raises(UnsafeNameError):
        check_file_name(name, "model file", (".npz",))


def test_ids_by_their_exact_patterns():
    assert check_job_id("stylize-" + "0" * 32)
    assert check_run_id("20240101T000000--20240101T010000") and check_run_id("begin--end")
    assert check_shard_id("shard-0123456789abcdef")
    for bad in ("local", "stylize-../../x", "stylize-" + "0" * 31, "STYLIZE-" + "0" * 32, 7, None):
        with pytest.raises(UnsafeNameError):
            check_job_id(bad)
    with pytest.raises(UnsafeNameError):
        check_run_id("../20240101T000000--20240101T010000")
    with pytest.raises(UnsafeNameError):
        check_shard_id("shard-../../closed")
