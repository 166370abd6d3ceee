"""The SHA-256 whose state is saved with a tus upload's row (vimeo_api/sha256_state.py):
the same digests as hashlib whatever the pieces, and a state that goes on in another
object (as in another process) from its saved bytes."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from vimeo_api.sha256_state import STATE_SIZE, Sha256State


def test_the_digests_of_the_standard_examples():
    # FIPS 180-2, appendix B.
    assert Sha256State(b"abc").hexdigest() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
    assert Sha256State(long).hexdigest() == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    assert Sha256State().hexdigest() == hashlib.sha256(b"").hexdigest()


def test_saved_and_restored_at_any_cut_it_gives_hashlibs_digest():
    data = os.urandom(3 * 1024 * 1024 + 77)
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(data)), 40)) + [len(data)]
    state, start = Sha256State(), 0
    for cut in cuts:
        saved = state.save()
        assert len(saved) == STATE_SIZE
        state = Sha256State.restore(saved)  # as if the next piece went to another process
        state.update(data[start:cut])
        start = cut
    assert state.hexdigest() == hashlib.sha256(data).hexdigest()
    # digest() leaves the state going on.
    state.update(b"more")
    assert state.digest() == hashlib.sha256(data + b"more").digest()


def test_bytes_bytearrays_and_views_are_hashed_without_keeping_them():
    buffer = bytearray(os.urandom(1000))
    frozen = bytes(buffer)
    state = Sha256State()
    state.update(buffer)
    state.update(memoryview(buffer)[10:500])
    state.update(memoryview(frozen)[3:9])
    del buffer[500:]  # the bytearray is not held by the hash (resizing an exported one fails)
    copy = state.copy()
    copy.update(b"x")
    expected = hashlib.sha256(frozen + frozen[10:500] + frozen[3:9])
    assert state.hexdigest() == expected.hexdigest()
    expected.update(b"x")
    assert copy.hexdigest() == expected.hexdigest()


@pytest.mark.parametrize("bad", [b"", b"x" * STATE_SIZE, b"\0" * (STATE_SIZE - 1), "text"])
def test_anything_but_a_saved_state_is_refused(bad):
    with pytest.raises(ValueError):
        Sha256State.restore(bad)
