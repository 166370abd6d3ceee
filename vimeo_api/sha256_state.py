"""A SHA-256 whose running state can be saved and restored in another process.

A tus upload on object storage is hashed chunk by chunk on whichever worker, on whichever
node, takes each chunk, and the bytes already sent cannot be read back (S3 has no read of
an unfinished multipart upload's parts). So the hash state itself travels with the
upload's row: ``Sha256State.save()`` gives it as bytes, ``Sha256State.restore`` goes on
from them.

Hand-written, because ``hashlib`` cannot export its state and no maintained library does
at OpenSSL's speed: ``rehash`` refuses OpenSSL 3, and ``resumablesha256`` (a portable C
implementation) measured 254 MB/s here against 1,460–1,790 MB/s for OpenSSL, slower than
the S3 server takes parts (266 MB/s), which would have halved a tus upload's throughput
(deploy/S3-NOTES.md). This binds OpenSSL's documented ``SHA256_Init`` / ``SHA256_Update``
/ ``SHA256_Final`` (openssl/sha.h, deprecated in 3.0 but exported, the same assembly as
``hashlib``) with ctypes, which releases the GIL around each call like ``hashlib`` does.
The state is ``SHA256_CTX``, a public struct of 28 unsigned ints: nodes that share
uploads must share byte order (any two x86-64 or arm64 machines do).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
import threading

# sizeof(SHA256_CTX): h[8], Nl, Nh, data[16], num, md_len, each an unsigned int.
STATE_SIZE = 28 * 4
_NUM_OFFSET = 26 * 4
_BLOCK = 64
DIGEST_SIZE = 32

_lib = None
_lib_lock = threading.Lock()


def _crypto():
    """OpenSSL's libcrypto, loaded at the first hash (never at import)."""
    global _lib
    with _lib_lock:
        if _lib is None:
            name = ctypes.util.find_library("crypto")
            if not name:
                raise RuntimeError("libcrypto (OpenSSL) is not installed: resumable uploads to S3 need it")
            lib = ctypes.CDLL(name)
            for function, argtypes in (
                (lib.SHA256_Init, [ctypes.c_void_p]),
                (lib.SHA256_Update, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]),
                (lib.SHA256_Final, [ctypes.c_void_p, ctypes.c_void_p]),
            ):
                function.argtypes = argtypes
                function.restype = ctypes.c_int
            _lib = lib
        return _lib


class Sha256State:
    """``hashlib.sha256``'s ``update`` / ``digest`` / ``hexdigest`` / ``copy``, plus
    ``save`` and ``restore``."""

    name = "sha256"
    digest_size = DIGEST_SIZE
    block_size = _BLOCK

    def __init__(self, data=b""):
        self._lib = _crypto()
        self._ctx = ctypes.create_string_buffer(STATE_SIZE)
        if self._lib.SHA256_Init(self._ctx) != 1:
            raise RuntimeError("SHA256_Init failed")
        if data:
            self.update(data)

    @classmethod
    def restore(cls, state: bytes) -> "Sha256State":
        """The hash as ``save`` left it. ValueError for anything that is not such a state."""
        if not isinstance(state, (bytes, bytearray)) or len(state) != STATE_SIZE:
            raise ValueError("not a saved SHA-256 state")
        num, md_len = struct.unpack_from("=II", state, _NUM_OFFSET)
        if num >= _BLOCK or md_len != DIGEST_SIZE:
            raise ValueError("not a saved SHA-256 state (another byte order or library?)")
        self = cls()
        ctypes.memmove(self._ctx, bytes(state), STATE_SIZE)
        return self

    def save(self) -> bytes:
        """The running state: what ``restore`` takes to go on from here."""
        return self._ctx.raw

    def update(self, data) -> None:
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        if view.readonly:
            # bytes (what streams give): OpenSSL reads the object's own buffer.
            buffer = view.obj if isinstance(view.obj, bytes) and view.nbytes == len(view.obj) else view.tobytes()
        else:
            # A bytearray or a slice of one: no copy. The export ends with this call, so
            # the caller may resize the bytearray afterwards.
            buffer = (ctypes.c_char * view.nbytes).from_buffer(view)
        try:
            if self._lib.SHA256_Update(self._ctx, buffer, view.nbytes) != 1:
                raise RuntimeError("SHA256_Update failed")
        finally:
            del buffer
            view.release()

    def copy(self) -> "Sha256State":
        return Sha256State.restore(self.save())

    def digest(self) -> bytes:
        # SHA256_Final consumes its context: finish a copy, so this one can go on.
        ctx = ctypes.create_string_buffer(self._ctx.raw, STATE_SIZE)
        out = ctypes.create_string_buffer(DIGEST_SIZE)
        if self._lib.SHA256_Final(out, ctx) != 1:
            raise RuntimeError("SHA256_Final failed")
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()
