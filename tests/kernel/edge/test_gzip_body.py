"""``BoundedGzip``: the HTTP port's gzip reads what ``gzip.decompress`` reads, in time linear
in the body, and refuses a body of many members."""

from __future__ import annotations

import gzip
import zlib

import pytest
from connectrpc.errors import ConnectError
from foundry.kernel.edge.http.gzip_body import MAX_MEMBERS, SLICE, BoundedGzip
from hypothesis import given
from hypothesis import strategies as st

GZIP = BoundedGzip()


@given(
    members=st.lists(st.binary(max_size=3 * SLICE // 2), min_size=1, max_size=MAX_MEMBERS),
    level=st.sampled_from([0, 1, 9]),  # 0: stored, a member as long as its text
)
def test_it_reads_what_gzip_reads_across_slices(members, level):
    body = b"".join(gzip.compress(m, compresslevel=level) for m in members)
    assert GZIP.decompress(body) == gzip.decompress(body) == b"".join(members)
    assert GZIP.decompress(memoryview(body), len(b"".join(members))) == b"".join(members)


def test_an_empty_body_is_an_empty_message():
    assert GZIP.decompress(b"") == b""


def test_a_message_over_the_limit_is_refused_before_it_is_whole():
    bomb = gzip.compress(bytes(64 << 20))  # 64 MiB of zeros in ~64 KB
    with pytest.raises(ConnectError) as refused:
        GZIP.decompress(bomb, 1 << 20)
    assert refused.value.code.value == "resource_exhausted"
    assert "larger than configured max 1048576" in refused.value.message


def test_a_body_of_many_members_is_refused():
    """A hunt's 210,000 empty members (4 MiB): connectrpc copied the rest of the body after
    each one, minutes of the daemon's only thread."""
    many = gzip.compress(b"") * 210_000
    with pytest.raises(ConnectError) as refused:
        GZIP.decompress(many, 4 << 20)
    assert refused.value.code.value == "invalid_argument"
    assert f"more than {MAX_MEMBERS} members" in refused.value.message
    exactly = gzip.compress(b"a") * MAX_MEMBERS
    assert GZIP.decompress(exactly, 1 << 20) == b"a" * MAX_MEMBERS


def test_a_cut_or_damaged_body_is_refused():
    whole = gzip.compress(b"x" * 100_000)
    with pytest.raises(EOFError):
        GZIP.decompress(whole[:-20], 1 << 20)
    with pytest.raises(zlib.error):
        GZIP.decompress(whole + b"trailing", 1 << 20)
    with pytest.raises(zlib.error):
        GZIP.decompress(b"not gzip at all", 1 << 20)
