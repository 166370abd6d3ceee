"""Signed download tokens: tamper detection, expiry, key rotation, what a token reveals,
and the keys themselves (the installation key in STATE_DIR; short keys refused)."""

import os
import threading
import time

import pytest
from itsdangerous import URLSafeSerializer

from vimeo_api import signing

K1, OLD, NEW = "k1" + "1" * 40, "old" + "o" * 40, "new" + "n" * 40
LINK = "l1nk-1d_" + "x" * 14


def _issue(app, keys, link_id=LINK, ttl=60):
    app.config["TOKEN_SIGNING_KEYS"] = keys
    with app.app_context():
        return signing.issue(link_id, int(time.time()) + ttl)


def _verify(app, keys, token):
    app.config["TOKEN_SIGNING_KEYS"] = keys
    with app.app_context():
        return signing.verify(token)


def test_a_token_names_its_link(app):
    token = _issue(app, [K1])
    assert _verify(app, [K1], token) == LINK


def test_a_token_carries_its_link_id_and_expiry_only(app):
    """No filehash: an expired link cannot be turned into the file's permanent URL."""
    token = _issue(app, [K1])
    # Anyone can read the payload (zlib and base64, no key needed).
    decoded = URLSafeSerializer("any key").load_payload(token.rsplit(".", 1)[0].encode())
    assert set(decoded) == {"t", "e"} and decoded["t"] == LINK


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def test_every_one_character_change_is_invalid(app):
    """Each position, each other character of the alphabet (the last character of the
    signature once slipped through: its 2 padding bits are ignored by base64 decoding)."""
    token = _issue(app, [K1])
    accepted = []
    for position in range(len(token)):
        for ch in ALPHABET + ".":
            if ch == token[position]:
                continue
            changed = token[:position] + ch + token[position + 1 :]
            try:
                _verify(app, [K1], changed)
                accepted.append(changed)
            except signing.TokenInvalid:
                pass
    assert accepted == []


def test_an_expired_token_is_expired_not_invalid(app):
    token = _issue(app, [K1], ttl=-1)
    with pytest.raises(signing.TokenExpired):
        _verify(app, [K1], token)


def test_rotation_old_tokens_verify_while_the_old_key_is_listed(app):
    old = _issue(app, [OLD])
    new = _issue(app, [NEW, OLD])
    assert _verify(app, [NEW, OLD], old) == LINK
    assert _verify(app, [NEW, OLD], new) == LINK
    # the first key signs: a token made after rotation verifies with the new key alone
    assert _verify(app, [NEW], new) == LINK
    with pytest.raises(signing.TokenInvalid):
        _verify(app, [NEW], old)


# -- the keys -------------------------------------------------------------------------

def test_without_configured_keys_an_installation_key_is_made_once_in_the_state_dir(make_app, tmp_path):
    app = make_app(backend="sqlite", STATE_DIR=str(tmp_path / "state-here"))
    token = _issue(app, [])
    key_file = tmp_path / "state-here" / "token-signing.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(key_file.read_text().strip()) == 64
    assert _verify(app, [], token) == LINK
    assert _verify(app, [key_file.read_text().strip()], token) == LINK
    # Nothing else was left there (the temporary name it was written under is gone).
    assert os.listdir(tmp_path / "state-here") == ["token-signing.key"]


def test_the_state_dir_defaults_to_systemds_state_directory(make_app, tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'systemd-state'}:/elsewhere")
    app = make_app(backend="sqlite", STATE_DIR=None)
    assert app.config["STATE_DIR"] == str(tmp_path / "systemd-state")


def test_processes_starting_at_once_share_one_key(make_app, tmp_path):
    app = make_app(backend="sqlite", STATE_DIR=str(tmp_path / "race"))
    keys, barrier = [], threading.Barrier(8)

    def start():
        barrier.wait()
        with app.app_context():
            keys.append(signing._keys()[0])

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys) == 8
    assert os.listdir(tmp_path / "race") == ["token-signing.key"]


@pytest.mark.parametrize("content", ["", "\n", "0123456789abcdef", "x" * 31])
def test_an_empty_or_short_key_file_refuses_to_start(make_app, tmp_path, content):
    state = tmp_path / "short"
    state.mkdir()
    (state / "token-signing.key").write_text(content)
    app = make_app(backend="sqlite", STATE_DIR=str(state))
    with pytest.raises(signing.SigningKeyError, match="cut short or edited"):
        signing.init_keys(app)
    assert (state / "token-signing.key").read_text() == content  # left for the operator to see


def test_a_short_configured_key_refuses_to_start(make_app):
    app = make_app(backend="sqlite", TOKEN_SIGNING_KEYS=[NEW, "short"])
    with pytest.raises(signing.SigningKeyError, match=r"TOKEN_SIGNING_KEYS\[1\] has 5 characters"):
        signing.init_keys(app)


def test_a_state_dir_it_cannot_write_refuses_to_start(make_app, tmp_path):
    app = make_app(backend="sqlite", STATE_DIR="/proc/vimeo-no-such-dir")
    with pytest.raises(signing.SigningKeyError, match="VIMEO_STATE_DIR"):
        signing.init_keys(app)
