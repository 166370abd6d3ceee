"""How the product represents a stored file in HTTP: its cache class, its
Content-Disposition, its filename, and the headers every answer about it carries.

Policy, not RFC (that is ``http_semantics``): pure functions over a resource's
descriptive attributes (``sha256``, ``size``, ``content_type``, ``filename``,
``modified_at``), which files, cached file metadata and published versions all have.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from enum import StrEnum
from urllib.parse import quote

from .http_semantics import Representation, format_etag, format_http_date


class CacheClass(StrEnum):
    """Which Cache-Control an answer carries (SPEC 3.2), most restrictive first."""

    TOKEN = "token"
    IMMUTABLE = "immutable"
    LIMITED = "limited"
    PASSWORD = "password"
    PUBLIC = "public"

    @property
    def cache_control(self) -> str:
        return CACHE_CONTROL[self]

    @property
    def shareable(self) -> bool:
        """Every client gets the same answer: nginx's fast path may keep it (grants.py)."""
        return self in (CacheClass.PUBLIC, CacheClass.IMMUTABLE)


CACHE_CONTROL = {
    CacheClass.LIMITED: "private, no-store",
    CacheClass.PASSWORD: "private, no-cache",
    CacheClass.PUBLIC: "public, max-age=60, s-maxage=3600",
    CacheClass.IMMUTABLE: "public, max-age=31536000, immutable",
    CacheClass.TOKEN: "private, no-store, no-cache, must-revalidate",
}


def cache_class(*, max_downloads: int, has_password: bool, published: bool = False,
                token: bool = False) -> CacheClass:
    """The class of an answer, most restrictive reason first: a token download; a
    published version; limited downloads (a shared cache would serve downloads we must
    count); a password; else public."""
    if token:
        return CacheClass.TOKEN
    if published:
        return CacheClass.IMMUTABLE
    if max_downloads >= 1:
        return CacheClass.LIMITED
    if has_password:
        return CacheClass.PASSWORD
    return CacheClass.PUBLIC


def file_cache_class(file) -> CacheClass:
    """The class of a file's own URL."""
    return cache_class(max_downloads=file.max_downloads, has_password=file.password_hash is not None)


# -- filenames ---------------------------------------------------------------------------

MAX_FILENAME = 255
DEFAULT_FILENAME = "file"


def clean_filename(name: str | None) -> str:
    """The one sanitizer of a client's filename, applied at upload and again (a no-op on
    what upload kept) in Content-Disposition. The name is kept for Content-Disposition and
    listings only, never for a path: its last path component, without control, format
    (e.g. U+202E, which fakes extensions), surrogate, line and paragraph separator
    characters, at most 255 characters keeping a short extension."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C"
                   and unicodedata.category(ch) not in ("Zl", "Zp")).strip()
    if name in ("", ".", ".."):
        name = DEFAULT_FILENAME
    if len(name) > MAX_FILENAME:
        stem, ext = os.path.splitext(name)
        name = stem[: MAX_FILENAME - len(ext[:32])] + ext[:32]
    return name


# Types a browser renders or runs actively on our origin when shown inline.
_ACTIVE_TYPES = frozenset({
    "text/html", "application/xhtml+xml", "image/svg+xml", "text/xml",
    "application/xml", "application/xml-dtd", "text/xml-external-parsed-entity",
    "text/xsl", "text/javascript", "application/javascript", "application/x-javascript",
    "text/x-javascript", "text/jscript", "text/livescript", "application/ecmascript",
    "application/x-ecmascript", "text/ecmascript", "text/x-ecmascript",
    "application/x-shockwave-flash", "application/futuresplash", "text/x-component",
    "application/hta",
})


def _is_active(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip(" \t").lower()
    kind, sep, subtype = media.partition("/")
    if not (sep and kind and subtype):
        return True  # unknown type: a browser may sniff it as HTML
    return (media in _ACTIVE_TYPES or kind == "multipart"
            or subtype.endswith(("+xml", "+html")))


def _ascii_fallback(name: str) -> str:
    # NFKD + dropping combining marks transliterates "résumé" to "resume";
    # other non-ASCII becomes "_". '"' and '\' would break the quoted-string,
    # '/' is a path separator and '%' is mis-decoded by some agents (RFC 6266
    # Appendix D), so they become "_" too.
    out = []
    for ch in unicodedata.normalize("NFKD", name):
        if unicodedata.combining(ch):
            continue
        out.append("_" if ch in '"\\/%' or not " " <= ch <= "~" else ch)
    return "".join(out).strip(" ") or "download"


def content_disposition(filename: str, content_type: str, *, force_attachment: bool = False) -> str:
    """Content-Disposition value (RFC 6266) with both filename parameters.

    ``inline`` unless force_attachment or the type is one a browser would
    render or run actively (HTML, XML, SVG, scripts, Flash, multipart, unknown),
    which would let an uploaded file script our origin. ``filename`` carries a
    sanitised ASCII fallback; ``filename*`` the UTF-8 name (RFC 8187).
    """
    name = clean_filename(filename)
    disposition = "attachment" if force_attachment or _is_active(content_type) else "inline"
    # RFC 8187 §3.2.1 attr-char: ALPHA DIGIT !#$&+-.^_`|~ stay; quote() always
    # keeps ALPHA DIGIT _.-~, so only the rest is listed as safe.
    encoded = quote(name.encode("utf-8"), safe="!#$&+^`|")
    return f"{disposition}; filename=\"{_ascii_fallback(name)}\"; filename*=UTF-8''{encoded}"


# -- the headers of an answer -------------------------------------------------------------

def representation_of(resource) -> Representation:
    """What preconditions and ranges are evaluated against: the content's SHA-256 is the
    strong ETag."""
    return Representation(etag=resource.sha256, last_modified=resource.modified_at, size=resource.size)


def validator_headers(resource, klass: CacheClass) -> dict[str, str]:
    """Headers a 304 repeats from the 200 (RFC 9110 §15.4.5)."""
    return {
        "ETag": format_etag(resource.sha256),
        "Last-Modified": format_http_date(resource.modified_at),
        "Cache-Control": CACHE_CONTROL[klass],
    }


# Every download is a sandboxed document should a browser render it: an inline PDF
# opens in a viewer that runs the document's own scripts, and other inline types a
# browser shows may have such viewers too. No scripts, forms, plugins or same-origin
# access on our origin; an attachment is not rendered, so it costs nothing there.
DOWNLOAD_CSP = "sandbox"


# -- edge caches' surrogate keys ------------------------------------------------------------

# Every download names what it is of in Surrogate-Key, so that an edge cache can drop all
# it holds of a file or a version at once (vimeo_api/edge.py bans by key). The keys are
# hashes: an edge's logs, and anyone reading the header, learn no capability from them.
ALL_KEY = "vimeo"


def file_surrogate_key(filehash: str) -> str:
    return "vimeo-f-" + hashlib.sha256(b"file:" + filehash.encode()).hexdigest()[:32]


def version_surrogate_key(version_id: str) -> str:
    return "vimeo-v-" + hashlib.sha256(b"version:" + version_id.encode()).hexdigest()[:32]


def surrogate_keys(resource) -> str:
    """``vimeo`` (every answer: a purge of everything) and the key of the file or the
    published version the answer is of."""
    version_id = getattr(resource, "version_id", None)
    own = version_surrogate_key(version_id) if version_id else file_surrogate_key(resource.filehash)
    return f"{ALL_KEY} {own}"


def content_headers(resource, klass: CacheClass) -> dict[str, str]:
    """Every header a 200/206 about the resource carries, but its length and range."""
    headers = validator_headers(resource, klass)
    headers["Content-Type"] = resource.content_type
    headers["Content-Disposition"] = content_disposition(resource.filename, resource.content_type)
    headers["Accept-Ranges"] = "bytes"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Content-Security-Policy"] = DOWNLOAD_CSP
    headers["Surrogate-Key"] = surrogate_keys(resource)
    return headers
