#!/usr/bin/env python
"""Builds vimeo_api/openapi.json, the OpenAPI 3.1 document of every route (SPEC 3.8).

The document is a static file served by vimeo_api/openapi.py; this script is where it is
written, because its patterns (the option texts, the cursor) are easier to derive than
to type. Edit here, run ``python scripts/build_openapi.py``, commit both;
tests/test_openapi.py fails when the two differ.
"""

import json
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent.parent / "vimeo_api" / "openapi.json"

P = "/vimeo/api/v1.0"
ref = lambda kind, name: {"$ref": f"#/components/{kind}/{name}"}

PHRASES = ["Bad Request", "Unauthorized", "Forbidden", "Not Found", "Method not Allowed", "Request Timeout",
           "Conflict", "Gone", "Length Required", "Precondition Failed", "Request Entity Too Large", "URI Too Long",
           "Unsupported Media Type", "Range Not Satisfiable", "Expectation Failed", "Too Many Requests",
           "Request Header Fields Too Large", "Internal Server Error",
           "Bad Gateway", "Service Unavailable", "Gateway Timeout", "Insufficient Storage", "Locked",
           "Checksum Mismatch"]

# Texts the API accepts for the options (form fields, headers, JSON strings): surrounding
# whitespace is ignored; an empty value means "not given".
MAX_DOWNLOADS_TEXT = r"^(\s*[0-9]{1,9}\s*)?$"


def _number(significant: int) -> str:
    """1 to 10**significant - 1, with leading zeros, at most 12 digits in all (files.parse_expires_in)."""
    return "(" + "|".join(f"0{{{k}}}[1-9][0-9]{{0,{min(significant - 1, 11 - k)}}}" for k in range(12)) + ")"


# Bounded below 100 years whatever the unit: 999999999 s, 9999999 m, 99999 h, 9999 d.
EXPIRES_IN_TEXT = (
    r"^(\s*(" + _number(9) + "[sS]?|" + _number(7) + "[mM]|" + _number(5) + "[hH]|" + _number(4) + "[dD]"
    r"|[nN][eE][vV][eE][rR])\s*)?$"
)

# What GET /files hands out as next_cursor: base64url of 1 to 18 decimal digits.
_PAIR = "(MD|MT|Mj|Mz|ND|NT|Nj|Nz|OD|OT)"
_GROUP = _PAIR + "[AEIMQUYcgk][012345wxyz]"
CURSOR = f"({_GROUP}){{0,5}}({_GROUP}|{_PAIR}[AEIMQUYcgk]|(MA|MQ|Mg|Mw|NA|NQ|Ng|Nw|OA|OQ))"

schemas = {
    "Error": {
        "type": "object",
        "description": "Every error (SPEC 3.4). `error` is one of the original product's exact phrases.",
        "required": ["error", "message", "request_id"],
        "additionalProperties": False,
        "properties": {
            "error": {"type": "string", "enum": PHRASES},
            "message": {"type": "string", "description": "What went wrong, for a person."},
            "request_id": {"type": ["string", "null"], "description": "Also in X-Request-Id and the server's log."},
            "reason": {"enum": ["downloaded", "expired", "deleted"],
                       "description": "410 about a file only: why it serves no more (its downloads are used up, it "
                                      "expired, it was deleted). Clients match on it; `message` says it for a person."},
        },
    },
    "Transfer": {
        "type": "object", "required": ["at", "bytes_sent", "completed", "resumed"],
        "properties": {
            "at": {"type": "string", "description": "When the transfer began, ISO 8601 UTC."},
            "bytes_sent": {"type": ["integer", "null"], "minimum": 0,
                           "description": "Bytes the server sent; null until the sender has said (in the stack, "
                                          "nginx's log of the transfer, read when this list is asked for)."},
            "completed": {"type": "boolean",
                          "description": "Every byte went out and no resumption followed (a resumption means the "
                                         "client lacked the end)."},
            "resumed": {"type": "boolean",
                        "description": "The rest of an earlier counted download, within the resume window: it "
                                       "used no download."},
            "client": {"type": ["string", "null"],
                       "description": "The client's address; only when the operator's DOWNLOADS_CLIENT_ADDRESS is on."},
        },
    },
    "DownloadList": {
        "type": "object", "required": ["downloads"], "additionalProperties": False,
        "properties": {"downloads": {"type": "array", "items": ref("schemas", "Transfer"),
                                     "description": "Oldest first; the latest 1000 (DOWNLOADS_LIST_LIMIT)."}},
    },
    "DownloadForm": {
        "type": "object", "additionalProperties": False,
        "properties": {"password": {"type": "string", "description": "The file's password, when it has one."}},
    },
    "FileDescription": {
        "type": "object",
        "required": ["url", "filehash", "filename", "size", "content_type", "sha256", "etag", "max_downloads",
                     "downloads", "expires_at", "password_protected"],
        "properties": {
            "url": {"type": "string", "description": "Absolute download URL, built from the configured public URL."},
            "filehash": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "filename": {"type": "string"},
            "size": {"type": "integer", "minimum": 0},
            "content_type": {"type": "string"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "etag": {"type": "string", "pattern": '^"[0-9a-f]{64}"$'},
            "max_downloads": {"type": "integer", "minimum": 0, "description": "0 means unlimited."},
            "downloads": {"type": "integer", "minimum": 0},
            "expires_at": {"type": ["string", "null"], "description": "ISO 8601 UTC; null: never."},
            "password_protected": {"type": "boolean"},
        },
    },
    "Uploaded": {
        "allOf": [
            ref("schemas", "FileDescription"),
            {
                "type": "object",
                "required": ["status", "owner_token"],
                "properties": {
                    "status": {"const": "File Uploaded Successfully"},
                    "owner_token": {"type": "string", "description": "Shown once: send it in X-Owner-Token to manage the file."},
                },
            },
        ]
    },
    "Replaced": {"allOf": [ref("schemas", "FileDescription"),
                           {"type": "object", "required": ["status"], "properties": {"status": {"const": "File Replaced"}}}]},
    "Updated": {"allOf": [ref("schemas", "FileDescription"),
                          {"type": "object", "required": ["status"], "properties": {"status": {"const": "File Updated"}}}]},
    "DeletionScheduled": {
        "type": "object", "required": ["status"], "additionalProperties": False,
        "properties": {"status": {"const": "File Deletion Scheduled"}},
    },
    "MaxDownloadsText": {"type": "string", "pattern": MAX_DOWNLOADS_TEXT,
                         "description": "An integer >= 0 (0: unlimited). Empty: the default, 1."},
    "ExpiresInText": {"type": "string", "pattern": EXPIRES_IN_TEXT,
                      "description": "Seconds, or a number with s/m/h/d, or `never`; at most 100 years (and the "
                                     "configured maximum). Empty: the configured default."},
    "FileOptions": {
        "type": "object",
        "description": "PATCH: only the options given change.",
        "examples": [{"max_downloads": 5, "expires_in": "1d", "password": None}],
        "additionalProperties": False,
        "properties": {
            "expires_in": {"anyOf": [
                {"type": "null", "description": "No expiry (as `never`)."},
                {"type": "integer", "minimum": 1, "maximum": 999999999},
                ref("schemas", "ExpiresInText"),
            ]},
            "max_downloads": {"anyOf": [
                {"type": "null", "description": "Unchanged."},
                {"type": "integer", "minimum": 0, "maximum": 999999999},
                ref("schemas", "MaxDownloadsText"),
            ]},
            "password": {"anyOf": [
                {"type": "null", "description": "Removes the password."},
                {"type": "string", "maxLength": 1024, "description": "Empty: unchanged."},
            ]},
        },
    },
    "MultipartUpload": {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": "The file (its part's filename is kept for Content-Disposition)."},
            "password": {"type": "string", "maxLength": 1024, "description": "Downloads then need it. Empty: none."},
            "max_downloads": ref("schemas", "MaxDownloadsText"),
            "expires_in": ref("schemas", "ExpiresInText"),
        },
    },
    "MultipartReplacement": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary"}},
    },
    "VersionCreated": {
        "type": "object", "required": ["version_id", "url", "etag"],
        "properties": {
            "version_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "url": {"type": "string"},
            "etag": {"type": "string", "pattern": '^"[0-9a-f]{64}"$'},
        },
    },
    "TokenRequest": {
        "type": "object",
        "examples": [{"expires_in": 600}],
        "properties": {"expires_in": {"type": "integer", "minimum": 1, "maximum": 86400,
                                      "description": "Seconds; default 300; the maximum is configuration (TOKEN_MAX_EXPIRES_IN, 86400 by default)."}},
    },
    "LinksRevoked": {
        "type": "object", "required": ["status", "revoked"], "additionalProperties": False,
        "properties": {"status": {"const": "Links Revoked"},
                       "revoked": {"type": "integer", "minimum": 0, "description": "Live links revoked now."}},
    },
    "TokenCreated": {
        "type": "object", "required": ["token", "url", "expires_at"],
        "properties": {"token": {"type": "string"}, "url": {"type": "string"},
                       "expires_at": {"type": "string", "description": "ISO 8601 UTC."}},
    },
    "OperatorFile": {
        "type": "object",
        "required": ["filehash", "filename", "size", "content_type", "sha256", "status", "gone_reason", "downloads",
                     "max_downloads", "password_protected", "created_at", "expires_at"],
        "properties": {
            "filehash": {"type": "string"}, "filename": {"type": "string"}, "size": {"type": "integer"},
            "content_type": {"type": "string"}, "sha256": {"type": "string"},
            "status": {"enum": ["available", "gone"]},
            "gone_reason": {"type": ["string", "null"], "enum": ["downloaded", "deleted", "expired", None]},
            "downloads": {"type": "integer"}, "max_downloads": {"type": "integer"},
            "password_protected": {"type": "boolean"},
            "created_at": {"type": "string"}, "expires_at": {"type": ["string", "null"]},
        },
    },
    "FileList": {
        "type": "object", "required": ["files", "next_cursor"],
        "properties": {
            "files": {"type": "array", "items": ref("schemas", "OperatorFile")},
            "next_cursor": {"type": ["string", "null"], "description": "Pass as `cursor` for the next page; null: last page."},
        },
    },
    "Stats": {
        "type": "object", "required": ["files", "downloads", "bytes_served", "stored"],
        "properties": {
            "files": {
                "type": "object", "required": ["available", "gone"],
                "properties": {k: {"type": "object", "required": ["files", "bytes"],
                                   "properties": {"files": {"type": "integer"}, "bytes": {"type": "integer"}}}
                               for k in ("available", "gone")},
            },
            "downloads": {"type": "integer"},
            "bytes_served": {"type": "integer"},
            "stored": {"type": "object", "required": ["blobs", "bytes"],
                       "properties": {"blobs": {"type": "integer"}, "bytes": {"type": "integer"}}},
        },
    },
    "PurgeRequest": {
        "description": "Which cached metadata and cached 404/410 answers to drop (never changes a file).",
        "examples": [{"type": "all"}, {"type": "prefix", "items": ["/vimeo/api/v1.0/file/ab*"]}],
        "oneOf": [
            {"type": "object", "required": ["type"], "additionalProperties": False,
             "properties": {"type": {"const": "all"},
                            "items": {"type": "array", "maxItems": 1000, "items": {"type": "string"},
                                      "description": "Ignored."}}},
            {"type": "object", "required": ["type", "items"], "additionalProperties": False,
             "properties": {"type": {"const": "url"},
                            "items": {"type": "array", "minItems": 1, "maxItems": 1000,
                                      "items": ref("schemas", "PurgeUrl")}}},
            {"type": "object", "required": ["type", "items"], "additionalProperties": False,
             "properties": {"type": {"const": "prefix"},
                            "items": {"type": "array", "minItems": 1, "maxItems": 1000,
                                      "items": ref("schemas", "PurgePrefix")}}},
        ],
    },
    "PurgeUrl": {
        "type": "string",
        "description": "A file URL, its path, or a bare filehash. (A version URL, .../v/<version_id>, of a "
                       "published version is accepted too.)",
        "pattern": r"^(https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/vimeo/api/v1\.0)?/file/|/vimeo/api/v1\.0/file/|/file/)?[0-9a-f]{32}$",
    },
    "PurgePrefix": {
        "type": "string",
        "description": "A filehash prefix, alone or as a file URL or path ending in `*`: `ab*`, `/vimeo/api/v1.0/file/ab*`.",
        "pattern": r"^((https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?)?/vimeo/api/v1\.0/file/|/file/)?[0-9a-fA-F]{0,32}\*?$",
    },
    "PurgeAccepted": {
        "type": "object", "required": ["purge_id", "status"],
        "properties": {"purge_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                       "status": {"enum": ["done", "pending"],
                                  "description": "pending: the cache is down; the purge is carried out when it is back."}},
    },
    "PurgeRecord": {
        "type": "object", "required": ["purge_id", "type", "items", "status", "files", "created_at", "completed_at",
                                       "edges_targeted", "edges_done"],
        "properties": {
            "purge_id": {"type": "string"}, "type": {"enum": ["url", "prefix", "all"]},
            "items": {"type": "array", "items": {"type": "string"}},
            "status": {"enum": ["done", "pending"]},
            "files": {"type": "integer", "minimum": 0, "description": "Files whose cached entries were dropped."},
            "created_at": {"type": "string"}, "completed_at": {"type": ["string", "null"]},
            "edges_targeted": {"type": "integer", "minimum": 0,
                               "description": "Edge caches (EDGE_PURGE_URLS) sent a BAN of the purged files."},
            "edges_done": {"type": "integer", "minimum": 0, "description": "Edges that took it (answered 2xx)."},
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Ready": {
        "type": "object", "required": ["status", "checks"],
        "properties": {
            "status": {"const": "ready"},
            "checks": {"type": "object", "required": ["database", "cache", "broker", "storage"],
                       "additionalProperties": {"enum": ["ok", "not used"]}},
        },
    },
}

string = {"type": "string"}
headers = {
    "XRequestId": {"description": "The request's id (nginx's, or a new one); also in error bodies and logs.",
                   "required": True, "schema": string},
    "ETag": {"description": "Strong validator from the content's SHA-256.", "required": True,
             "schema": {"type": "string", "pattern": '^"[0-9a-f]{64}"$'}},
    "LastModified": {"required": True, "schema": string},
    "CacheControl": {"description": "By class (SPEC 3.2).", "required": True, "schema": string},
    "AcceptRanges": {"required": True, "schema": {"const": "bytes"}},
    "ContentDisposition": {"description": "RFC 6266 with filename*.", "required": True, "schema": string},
    "NoSniff": {"required": True, "schema": {"const": "nosniff"}},
    "ContentSecurityPolicy": {"description": "A download a browser renders (an inline PDF) is a sandboxed document.",
                              "required": True, "schema": {"const": "sandbox"}},
    "ContentRange": {"required": True, "schema": {"type": "string", "pattern": r"^bytes (\d+-\d+|\*)/\d+$"}},
    "Location": {"description": "The new resource's absolute URL.", "required": True, "schema": string},
    "RetryAfter": {"description": "Seconds.", "required": True, "schema": {"type": "string", "pattern": r"^\d+$"}},
    "Allow": {"required": True, "schema": string},
    "WWWAuthenticateBasic": {"description": 'Basic realm="vimeo_api"', "required": True, "schema": {"type": "string", "pattern": "^[Bb]asic"}},
    "WWWAuthenticateBearer": {"required": True, "schema": {"type": "string", "pattern": "^[Bb]earer"}},
}
# tus 1.0.0 (vimeo_api/tus.py).
headers.update({
    "TusResumable": {"description": "The tus version of the answer.", "required": True, "schema": {"const": "1.0.0"}},
    "TusVersion": {"description": "The tus versions this server speaks.", "required": True, "schema": {"const": "1.0.0"}},
    "TusExtension": {"required": True, "schema": {
        "const": "creation,creation-defer-length,creation-with-upload,termination,checksum,expiration"}},
    "TusMaxSize": {"description": "The largest upload, in bytes (MAX_RESUMABLE_UPLOAD_SIZE).", "required": True,
                   "schema": {"type": "string", "pattern": r"^\d+$"}},
    "TusChecksumAlgorithm": {"description": "Algorithms Upload-Checksum may name.", "required": True,
                             "schema": {"const": "sha1,sha256,sha512,md5"}},
    "UploadOffset": {"description": "Bytes of the upload received and on stable storage.", "required": True,
                     "schema": {"type": "string", "pattern": r"^\d+$"}},
    "UploadOffsetCreated": {"description": "With a body (creation-with-upload): the offset after it.",
                            "required": False, "schema": {"type": "string", "pattern": r"^\d+$"}},
    "UploadLength": {"description": "The upload's length (absent while deferred).", "required": False,
                     "schema": {"type": "string", "pattern": r"^\d+$"}},
    "UploadDeferLength": {"description": "1 while the length is not known yet.", "required": False,
                          "schema": {"const": "1"}},
    "UploadMetadataEcho": {"description": "Upload-Metadata as sent at creation, without the password.",
                           "required": False, "schema": string},
    "UploadExpires": {"description": "RFC 9110 date after which an unfinished upload is gone (each chunk moves it).",
                      "required": False, "schema": string},
    "TusLocation": {"description": "The new upload's URL, relative (/vimeo/api/v1.0/tus/<upload_id>).",
                    "required": True, "schema": {"type": "string", "pattern": "^/vimeo/api/v1\\.0/tus/[0-9a-f]{32}$"}},
    "XFileUrl": {"description": "Once the upload is complete: the file's download URL.", "required": False,
                 "schema": string},
    "XOwnerToken": {"description": "Once the upload is complete: the file's owner token (send it in X-Owner-Token "
                                   "to manage the file). Told only to whoever knows the upload's URL.",
                    "required": False, "schema": string},
})
rid = {"X-Request-Id": ref("headers", "XRequestId")}


def error(description, **extra):
    return {"description": description, "headers": {**rid, **{k: ref("headers", v) for k, v in extra.items()}},
            "content": {"application/json": {"schema": ref("schemas", "Error")}}}


responses = {
    "BadRequest": error("The request is malformed or an option is invalid (the message says which)."),
    "Unauthorized": error("A credential is missing or wrong."),
    "UnauthorizedPassword": error("The file has a password, and none or a wrong one was sent.",
                                  **{"WWW-Authenticate": "WWWAuthenticateBasic"}),
    "UnauthorizedBearer": error("No valid operator bearer token.", **{"WWW-Authenticate": "WWWAuthenticateBearer"}),
    "Forbidden": error("The credential is valid but not for this."),
    "NotFound": error("No such file, version or route."),
    "Gone": error("Deleted, expired, or its download limit is reached: `reason` says which. A browser or a link "
                  "preview asking for a download gets the same status with the landing page (text/html)."),
    "UnsupportedMediaType": error("The body is not a form (application/x-www-form-urlencoded)."),
    "FormSentRaw": error("A multipart form (Content-Type: multipart/form-data) sent as a raw upload: PUT /file "
                         "takes forms. Nothing is stored."),
    "PreconditionFailed": error("If-Match / If-Unmodified-Since do not hold."),
    "TooLarge": error("The upload is larger than the configured maximum."),
    "TooSlow": error("The body stalled for BODY_READ_TIMEOUT seconds or arrived slower than BODY_MIN_RATE."),
    "RangeNotSatisfiable": error("No requested range overlaps the content.", **{"Content-Range": "ContentRange"}),
    "TooManyRequests": error("Too many wrong passwords from this client; retry later.",
                             **{"Retry-After": "RetryAfter"}),
    "TooManyUploads": error("Too many uploads from this address (UPLOAD_RATE_LIMIT); retry later.",
                            **{"Retry-After": "RetryAfter"}),
    "Unavailable": error("The database (or, for /readyz, any dependency) is unavailable.",
                         **{"Retry-After": "RetryAfter"}),
    "InsufficientStorage": error("The storage is full."),
    "TusPreconditionFailed": error("Tus-Resumable is missing, or names a version this server does not speak.",
                                   **{"Tus-Version": "TusVersion"}),
    "TusNotFound": error("No upload at this address (never created, terminated, or removed after it expired)."),
    "TusGone": error("The upload expired (Upload-Expires) and can no longer be resumed."),
    "TusBadRequest": error("A tus header is missing or invalid, an option in Upload-Metadata is invalid, or the "
                           "chunk named a checksum algorithm this server does not know (the chunk is discarded)."),
    "TusTooLarge": error("More than MAX_RESUMABLE_UPLOAD_SIZE, a chunk past Upload-Length, or a body larger "
                         "than MAX_RESUMABLE_CHUNK_SIZE."),
    "TusOffsetMismatch": error("Upload-Offset is not the upload's offset (ask with HEAD); nothing changed."),
    "TusLocked": error("Another request is writing to this upload; retry after it ends."),
    "TusChecksumMismatch": error("The chunk does not match Upload-Checksum; it was discarded, the offset is unchanged."),
    "TusUnsupportedMediaType": error("A chunk must be sent as Content-Type: application/offset+octet-stream."),
    "TusInsufficientStorage": error("The upload would not fit in the free space (beside the other unfinished uploads)."),
}


def p(name, where, description, schema=None, required=False, **kw):
    """A parameter object (path parameters are always required)."""
    return {"name": name, "in": where, "description": description, "required": required or where == "path",
            "schema": schema or string, **kw}


parameters = {
    "filehash": p("filehash", "path", "The file's id: 32 lowercase hex characters (other values are 404).",
                  {"type": "string", "pattern": "^[0-9a-f]{32}$"}, example="3f2a9c0d4b5e6f708192a3b4c5d6e7f8"),
    "version_id": p("version_id", "path", "A published version's id (32 hex characters).",
                    {"type": "string", "pattern": "^[0-9a-f]{32}$"}),
    "token": p("token", "path", "A signed download token (tampered: 401, expired: 403)."),
    "filename": p("filename", "path", "The stored name (only for Content-Disposition; paths on disk never use it)."),
    "OwnerToken": p("X-Owner-Token", "header", "The owner token returned by the upload.", required=True),
    "OwnerTokenOptional": p("X-Owner-Token", "header", "The owner token; when sent it must be right."),
    "PasswordQuery": p("password", "query", "The file's password, the original way (kept out of logs)."),
    "PasswordHeader": p("X-Password", "header", "The file's password."),
    "IfMatch": p("If-Match", "header", "RFC 9110 13.1.1: 412 unless the ETag matches."),
    "IfNoneMatch": p("If-None-Match", "header", "RFC 9110 13.1.2: 304 when the ETag matches."),
    "IfModifiedSince": p("If-Modified-Since", "header", "RFC 9110 13.1.3: 304 when not modified since."),
    "IfUnmodifiedSince": p("If-Unmodified-Since", "header", "RFC 9110 13.1.4: 412 when modified since."),
    "Range": p("Range", "header", "RFC 9110 14.2: bytes=first-last[,...]; invalid values are ignored.",
               example="bytes=0-1023"),
    "IfRange": p("If-Range", "header", "RFC 9110 13.1.5: the Range applies only if this validator still holds."),
    "XPassword": p("X-Password", "header", "Protect the file with this password (max 1024 characters).",
                   {"type": "string", "maxLength": 1024}, example="s3cret"),
    "XMaxDownloads": p("X-Max-Downloads", "header", "Downloads allowed: integer >= 0, 0 = unlimited; default 1.",
                       ref("schemas", "MaxDownloadsText"), example="3"),
    "XExpiresIn": p("X-Expires-In", "header", "Seconds, or a number with s/m/h/d, or never.",
                    ref("schemas", "ExpiresInText"), example="2h"),
}
parameters.update({
    "upload_id": p("upload_id", "path", "A resumable upload's id: 32 lowercase hex characters (128 random bits).",
                   {"type": "string", "pattern": "^[0-9a-f]{32}$"}),
    "TusResumableRequest": p("Tus-Resumable", "header", "The tus version the client speaks; anything else is 412.",
                             {"type": "string", "enum": ["1.0.0"]}, required=True),
    "UploadLengthCreate": p("Upload-Length", "header", "The whole upload's length in bytes (or send "
                            "Upload-Defer-Length: 1 instead, and Upload-Length in a later PATCH).",
                            {"type": "string", "pattern": "^(0|[1-9][0-9]{0,9})$"}, required=True, example="1048576"),
    "UploadMetadata": p("Upload-Metadata", "header",
                        "Comma-separated `key base64value` pairs. Read: `filename`, `filetype` (the content type), "
                        "`password`, `max_downloads`, `expires_in`, with the meaning and defaults of the multipart "
                        "fields; other keys are kept and echoed. Invalid options are 400.",
                        string, example="filename dmlkZW8ubXA0,max_downloads Mw=="),
    "UploadOffsetRequest": p("Upload-Offset", "header", "Where this chunk goes: the upload's current offset.",
                             {"type": "string", "pattern": "^[0-9]{1,19}$"}, required=True),
    "UploadLengthPatch": p("Upload-Length", "header", "A deferred upload's length, once known; fixed from then on.",
                           {"type": "string", "pattern": "^[0-9]{1,19}$"}),
})
pr = lambda *names: [ref("parameters", n) for n in names]

json_body = lambda name: {"application/json": {"schema": ref("schemas", name)}}


def resp(description, schema=None, headers=None, content_type="application/json", links=None):
    out = {"description": description, "headers": {**rid, **{k: ref("headers", v) for k, v in (headers or {}).items()}}}
    if schema is not None:
        out["content"] = {content_type: {"schema": schema if "$ref" in schema or "type" in schema else ref("schemas", schema)}}
    if links:
        out["links"] = links
    return out


R = lambda *names: {str(code): ref("responses", name) for code, name in names}

owner_links = {
    "DownloadFile": {"operationId": "downloadFile", "parameters": {"path.filehash": "$response.body#/filehash"}},
    "HeadFile": {"operationId": "headFile", "parameters": {"path.filehash": "$response.body#/filehash"}},
    "DeleteFile": {"operationId": "deleteFile", "parameters": {
        "path.filehash": "$response.body#/filehash", "header.X-Owner-Token": "$response.body#/owner_token"}},
    "ReplaceFile": {"operationId": "replaceFile", "parameters": {
        "path.filehash": "$response.body#/filehash", "header.X-Owner-Token": "$response.body#/owner_token"}},
    "UpdateFile": {"operationId": "updateFile", "parameters": {
        "path.filehash": "$response.body#/filehash", "header.X-Owner-Token": "$response.body#/owner_token"}},
    "PublishVersion": {"operationId": "publishVersion", "parameters": {
        "path.filehash": "$response.body#/filehash", "header.X-Owner-Token": "$response.body#/owner_token"}},
    "IssueToken": {"operationId": "issueToken", "parameters": {
        "path.filehash": "$response.body#/filehash", "header.X-Owner-Token": "$response.body#/owner_token"}},
    "ListDownloads": {"operationId": "listDownloads", "parameters": {
        "path.filehash": "$response.body#/filehash", "header.X-Owner-Token": "$response.body#/owner_token"}},
    "RevokeTokens": {"operationId": "revokeTokens", "parameters": {
        "path.filehash": "$response.body#/filehash", "header.X-Owner-Token": "$response.body#/owner_token"}},
}

created = resp("Stored. The body's `url` is also in Location; keep `owner_token`.", "Uploaded",
               {"Location": "Location", "Cache-Control": "CacheControl"}, links=owner_links)
upload_errors = R((400, "BadRequest"), (408, "TooSlow"), (413, "TooLarge"), (429, "TooManyUploads"), (503, "Unavailable"),
                  (507, "InsufficientStorage"))

raw_upload = lambda op_id, summary, params: {
    "operationId": op_id, "tags": ["files"], "summary": summary,
    "description": "The raw body is the file (`curl -T video.mp4 .../upload/`); options as headers. The content type "
                   "comes from Content-Type when it is specific, else from the filename.",
    "parameters": params + pr("XPassword", "XMaxDownloads", "XExpiresIn"),
    "requestBody": {"required": False, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    "responses": {"201": created, **upload_errors, **R((415, "FormSentRaw"))},
}

download_headers = {"ETag": "ETag", "Last-Modified": "LastModified", "Cache-Control": "CacheControl",
                    "Accept-Ranges": "AcceptRanges", "Content-Disposition": "ContentDisposition",
                    "X-Content-Type-Options": "NoSniff", "Content-Security-Policy": "ContentSecurityPolicy"}
binary = {"type": "string", "format": "binary"}


def download_responses(extra):
    return {
        "200": resp("The content (a GET uses one download; HEAD does not).", binary, download_headers, "*/*"),
        "206": resp("The requested range(s); several ranges come as multipart/byteranges.", binary,
                    {**download_headers}, "*/*"),
        "304": resp("Not modified (If-None-Match / If-Modified-Since); uses no download. Repeats ETag and "
                    "Cache-Control (RFC 9110 15.4.5).", None, {"ETag": "ETag", "Cache-Control": "CacheControl"}),
        **R(*extra), **R((404, "NotFound"), (410, "Gone"), (412, "PreconditionFailed"),
                         (416, "RangeNotSatisfiable"), (503, "Unavailable")),
    }


# Headers whose rules involve other headers or the chunk itself, which a schema cannot
# state (a fuzzer would take a wrong checksum or two length headers for valid input).
TUS_PROSE_HEADERS = (
    "Also read: `Upload-Defer-Length: 1` (creation, instead of Upload-Length: the length comes with a later "
    "PATCH); `Upload-Checksum: <sha1|sha256|sha512|md5> <base64 digest of this request's chunk>` (a mismatch "
    "is 460 and the chunk is discarded, an unknown algorithm 400)."
)

tus_discovery_headers = {"Tus-Version": "TusVersion", "Tus-Extension": "TusExtension", "Tus-Max-Size": "TusMaxSize",
                         "Tus-Checksum-Algorithm": "TusChecksumAlgorithm", "Tus-Resumable": "TusResumable"}

conditional = ("IfMatch", "IfNoneMatch", "IfModifiedSince", "IfUnmodifiedSince", "Range", "IfRange")


def download_op(op_id, summary, description, params, extra, security=None):
    op = {"operationId": op_id, "tags": ["downloads"], "summary": summary, "description": description,
          "parameters": params + pr(*conditional), "responses": download_responses(extra)}
    if security is not None:
        op["security"] = security
    return op


password_security = [{}, {"passwordBasic": []}]
file_download_desc = ("Checks in order: unknown → 404; deleted, expired or used up → 410; password missing or "
                      "wrong → 401; preconditions (412/304); Range (206/416). The password comes from "
                      "X-Password, ?password= or HTTP Basic (user name ignored).\n\n"
                      "A limited or password-protected file answers a browser (Accept ranks text/html above "
                      "anything else, no Range) and any link preview, scanner or prefetch (README) with the "
                      "landing page instead, text/html, using no download; its Download button POSTs here. "
                      "Within the resume window after a counted download, the same client's Range request for "
                      "the rest of the same content is a 206 that uses no download.")


def form_download_op(op_id, summary, description, extra):
    return {
        "operationId": op_id, "tags": ["downloads"], "summary": summary, "description": description,
        "requestBody": {"required": False, "content": {
            "application/x-www-form-urlencoded": {"schema": ref("schemas", "DownloadForm")}}},
        "responses": {
            "200": resp("The whole file as an attachment; one download used.", binary, download_headers, "*/*"),
            **R(*extra, (404, "NotFound"), (410, "Gone"), (415, "UnsupportedMediaType"), (503, "Unavailable")),
        },
    }

paths = {
    P + "/file": {
        "put": {
            "operationId": "uploadMultipart", "tags": ["files"], "summary": "Upload a file (multipart, the original contract)",
            "description": "If no part is named `file`, the first file part is taken. The options may also come as "
                           "the headers of a raw upload (`X-Password`, `X-Max-Downloads`, `X-Expires-In`); a header "
                           "and a form field that give one option two values are a 400.",
            # Not listed as parameters: a document cannot say "the header or the field,
            # or both with one value", and a generator would send two values as valid.
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": ref("schemas", "MultipartUpload")}}},
            "responses": {"201": created, **upload_errors},
        }
    },
    P + "/upload/": {"put": raw_upload("uploadRawSlash", "Upload a raw body (curl -T appends the file name)", [])},
    P + "/upload": {"put": raw_upload("uploadRawBare", "Upload a raw body, named `upload`", [])},
    P + "/upload/{filename}": {"put": raw_upload("uploadRaw", "Upload a raw body under a filename", pr("filename"))},
    P + "/file/{filehash}": {
        "parameters": pr("filehash"),
        "get": download_op("downloadFile", "Download a file", file_download_desc,
                           pr("PasswordQuery", "PasswordHeader"), [(401, "UnauthorizedPassword"), (429, "TooManyRequests")],
                           password_security),
        "head": download_op("headFile", "A file's headers (uses no download)", file_download_desc,
                            pr("PasswordQuery", "PasswordHeader"), [(401, "UnauthorizedPassword"), (429, "TooManyRequests")],
                            password_security),
        "post": {**form_download_op(
            "downloadFileForm", "Download from the landing page's form",
            "The landing page's Download button: the password (when the file has one) as a form field. A "
            "browser that gets an error (wrong password 401, too many 429, gone 410) gets the page again, "
            "with the error on it.",
            [(400, "BadRequest"), (401, "UnauthorizedPassword"), (429, "TooManyRequests")]),
            "security": password_security},
        "delete": {
            "operationId": "deleteFile", "tags": ["files"], "summary": "Delete a file (owner or operator)",
            "description": "Needs the owner token in X-Owner-Token, or an operator bearer token with `files:write`. "
                           "410 at once; a worker removes the bytes after the grace period.",
            "parameters": pr("OwnerTokenOptional"),
            "security": [{}, {"operatorBearer": []}],
            "responses": {"202": resp("Deletion scheduled.", "DeletionScheduled"),
                          **R((401, "Unauthorized"), (403, "Forbidden"), (404, "NotFound"), (410, "Gone"), (503, "Unavailable"))},
        },
        "put": {
            "operationId": "replaceFile", "tags": ["files"], "summary": "Replace a file's content (owner)",
            "description": "New SHA-256, ETag and Last-Modified; options and download count stay. If-Match / "
                           "If-Unmodified-Since give optimistic concurrency (412 when stale).",
            "parameters": pr("OwnerToken", "IfMatch", "IfUnmodifiedSince"),
            "requestBody": {"required": False, "content": {
                "multipart/form-data": {"schema": ref("schemas", "MultipartReplacement")},
                "application/octet-stream": {"schema": binary},
            }},
            "responses": {"200": resp("Replaced.", "Replaced"),
                          **R((400, "BadRequest"), (401, "Unauthorized"), (403, "Forbidden"), (404, "NotFound"),
                              (410, "Gone"), (412, "PreconditionFailed"), (413, "TooLarge"), (503, "Unavailable"),
                              (507, "InsufficientStorage"))},
        },
        "patch": {
            "operationId": "updateFile", "tags": ["files"], "summary": "Change a file's options (owner)",
            "description": "Lowering max_downloads to what was already used makes the file gone.",
            "parameters": pr("OwnerToken"),
            "requestBody": {"required": True, "content": json_body("FileOptions")},
            "responses": {"200": resp("Updated.", "Updated"),
                          **R((400, "BadRequest"), (401, "Unauthorized"), (403, "Forbidden"), (404, "NotFound"),
                              (410, "Gone"), (503, "Unavailable"))},
        },
    },
    P + "/file/{filehash}/downloads": {
        "parameters": pr("filehash"),
        "get": {
            "operationId": "listDownloads", "tags": ["files"], "summary": "What downloads happened (owner)",
            "description": "One event per transfer the app decided: counted downloads and their resumptions. "
                           "Also for a used-up or expired file; a deleted one is 410. Public files (no limit, no "
                           "password) are only counted, not listed.",
            "parameters": pr("OwnerToken"),
            "responses": {"200": resp("The transfers.", "DownloadList"),
                          **R((401, "Unauthorized"), (403, "Forbidden"), (404, "NotFound"), (410, "Gone"),
                              (503, "Unavailable"))},
        },
    },
    P + "/file/{filehash}/versions": {
        "parameters": pr("filehash"),
        "post": {
            "operationId": "publishVersion", "tags": ["versions"], "summary": "Publish an immutable version (owner)",
            "parameters": pr("OwnerToken"),
            "responses": {
                "201": resp("Published.", "VersionCreated", {"Location": "Location"}),
                **R((401, "Unauthorized"), (403, "Forbidden"), (404, "NotFound"), (410, "Gone"), (503, "Unavailable")),
            },
        },
    },
    P + "/v/{version_id}": {
        "parameters": pr("version_id"),
        "get": download_op("downloadVersion", "Download a published version",
                           "Immutable cache class; no password; uses no download.", [], []),
        "head": download_op("headVersion", "A published version's headers", "As GET, without the body.", [], []),
    },
    P + "/file/{filehash}/tokens": {
        "parameters": pr("filehash"),
        "post": {
            "operationId": "issueToken", "tags": ["tokens"], "summary": "Issue a short-lived signed download URL",
            "description": "Needs the owner token, or (when none is sent) the file's password.",
            "parameters": pr("OwnerTokenOptional", "PasswordQuery", "PasswordHeader"),
            "security": password_security,
            "requestBody": {"required": False, "content": json_body("TokenRequest")},
            "responses": {
                "201": resp("Issued.", "TokenCreated", {"Cache-Control": "CacheControl"}),
                **R((400, "BadRequest"), (401, "UnauthorizedPassword"), (403, "Forbidden"), (404, "NotFound"),
                    (410, "Gone"), (429, "TooManyRequests"), (503, "Unavailable")),
            },
        },
        "delete": {
            "operationId": "revokeTokens", "tags": ["tokens"], "summary": "Revoke every signed link of a file (owner)",
            "description": "Links issued until now answer 403. A change of the file's password revokes them too.",
            "parameters": pr("OwnerToken"),
            "responses": {"200": resp("Revoked.", "LinksRevoked", {"Cache-Control": "CacheControl"}),
                          **R((401, "Unauthorized"), (403, "Forbidden"), (404, "NotFound"), (410, "Gone"),
                              (503, "Unavailable"))},
        },
    },
    P + "/t/{token}": {
        "parameters": pr("token"),
        "get": download_op("downloadWithToken", "Download with a signed token",
                           "Tampered → 401, expired or revoked → 403, file gone → 410; uses a download. "
                           "The token carries a random link id and its expiry, never the file's URL. A limited file's "
                           "link answers browsers and link previews with the landing page, as /file does.", [],
                           [(401, "Unauthorized"), (403, "Forbidden")]),
        "head": download_op("headWithToken", "Headers with a signed token", "As GET, without the body.", [],
                            [(401, "Unauthorized"), (403, "Forbidden")]),
        "post": form_download_op("downloadWithTokenForm", "Download from a token link's landing page",
                                 "The landing page's Download button for a token link (no password: the token "
                                 "stands for it).", [(400, "BadRequest"), (401, "Unauthorized"), (403, "Forbidden")]),
    },
    P + "/files": {
        "get": {
            "operationId": "listFiles", "tags": ["operators"], "summary": "List files (keyset pagination)",
            "description": "Scope `files:read`.",
            "security": [{"operatorBearer": []}],
            "parameters": [
                p("status", "query", "Which files.", {"type": "string", "enum": ["available", "gone", "all"], "default": "all"}),
                p("limit", "query", "Page size.", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}),
                p("cursor", "query", "The previous page's next_cursor.",
                  {"type": "string", "pattern": "^(" + CURSOR + ")?$"}),
            ],
            "responses": {"200": resp("A page.", "FileList"),
                          **R((400, "BadRequest"), (401, "UnauthorizedBearer"), (403, "Forbidden"), (503, "Unavailable"))},
        }
    },
    P + "/stats": {
        "get": {
            "operationId": "stats", "tags": ["operators"], "summary": "Files and bytes by status, downloads, bytes served",
            "description": "Scope `stats:read`.",
            "security": [{"operatorBearer": []}],
            "responses": {"200": resp("Totals.", "Stats"),
                          **R((401, "UnauthorizedBearer"), (403, "Forbidden"), (503, "Unavailable"))},
        }
    },
    P + "/purge": {
        "post": {
            "operationId": "purge", "tags": ["operators"], "summary": "Purge cached metadata and cached errors",
            "description": "Scope `cache:purge`. Location names the purge's record (no link: see the stateful "
                           "phase's entry points in tests/test_openapi.py).",
            "security": [{"operatorBearer": []}],
            "requestBody": {"required": True, "content": json_body("PurgeRequest")},
            "responses": {"202": resp("Accepted: done, or pending until the cache is back.", "PurgeAccepted",
                                      {"Location": "Location"}),
                          **R((400, "BadRequest"), (401, "UnauthorizedBearer"), (403, "Forbidden"), (503, "Unavailable"))},
        }
    },
    P + "/purge/{purge_id}": {
        "get": {
            "operationId": "purgeStatus", "tags": ["operators"], "summary": "A purge's record",
            "description": "Scope `cache:purge`. Records are kept for a day.",
            "security": [{"operatorBearer": []}],
            "parameters": [p("purge_id", "path", "The id POST /purge answered.", {"type": "string", "pattern": "^[0-9a-f]{32}$"})],
            "responses": {"200": resp("The record.", "PurgeRecord"),
                          **R((401, "UnauthorizedBearer"), (403, "Forbidden"), (404, "NotFound"), (503, "Unavailable"))},
        }
    },
    P + "/tus/": {
        "options": {
            "operationId": "tusDiscover", "tags": ["resumable"], "summary": "What this tus server supports",
            "description": "tus 1.0.0 discovery; no Tus-Resumable needed.",
            "responses": {"204": resp("The server's tus capabilities.", None, tus_discovery_headers)},
        },
        "post": {
            "operationId": "tusCreate", "tags": ["resumable"], "summary": "Create a resumable upload (tus creation)",
            "description": "tus 1.0.0 creation, creation-defer-length and creation-with-upload (a body of "
                           "application/offset+octet-stream is the first chunk, or all of it). Counts against "
                           "UPLOAD_RATE_LIMIT. X-HTTP-Method-Override is honoured on every tus route. When the body "
                           "completes the upload, X-File-Url and X-Owner-Token name the file. The file's options "
                           "come from Upload-Metadata (`password`, `max_downloads`, `expires_in`) or from the headers "
                           "`X-Password`, `X-Max-Downloads`, `X-Expires-In`; one option with two values is a 400. "
                           + TUS_PROSE_HEADERS,
            "parameters": pr("TusResumableRequest", "UploadLengthCreate", "UploadMetadata"),
            "requestBody": {"required": False, "content": {"application/offset+octet-stream": {"schema": binary}}},
            "responses": {
                "201": resp("Created; resume or continue at Location.", None,
                            {"Location": "TusLocation", "Tus-Resumable": "TusResumable", "Upload-Offset": "UploadOffsetCreated",
                             "Upload-Expires": "UploadExpires", "X-File-Url": "XFileUrl",
                             "X-Owner-Token": "XOwnerToken"}),
                **R((400, "TusBadRequest"), (412, "TusPreconditionFailed"), (413, "TusTooLarge"),
                    (415, "TusUnsupportedMediaType"), (429, "TooManyUploads"), (460, "TusChecksumMismatch"),
                    (503, "Unavailable"), (507, "TusInsufficientStorage")),
            },
        },
    },
    P + "/tus/{upload_id}": {
        "parameters": pr("upload_id"),
        "options": {
            "operationId": "tusDiscoverUpload", "tags": ["resumable"], "summary": "What this tus server supports",
            "responses": {"204": resp("The server's tus capabilities.", None, tus_discovery_headers),
                          **R((400, "TusBadRequest"), (404, "TusNotFound"))},
        },
        "head": {
            "operationId": "tusStatus", "tags": ["resumable"], "summary": "Where an upload stands (tus HEAD)",
            "description": "Upload-Offset is never ahead of what is on stable storage. Once complete, X-File-Url "
                           "and X-Owner-Token name the file (until the upload expires). Never cached.",
            "parameters": pr("TusResumableRequest"),
            "responses": {
                "200": resp("The upload's state.", None, {
                    "Upload-Offset": "UploadOffset", "Upload-Length": "UploadLength",
                    "Upload-Defer-Length": "UploadDeferLength", "Upload-Metadata": "UploadMetadataEcho",
                    "Upload-Expires": "UploadExpires", "Cache-Control": "CacheControl",
                    "Tus-Resumable": "TusResumable", "X-File-Url": "XFileUrl", "X-Owner-Token": "XOwnerToken"}),
                **R((400, "TusBadRequest"), (404, "TusNotFound"), (410, "TusGone"), (412, "TusPreconditionFailed"),
                    (503, "Unavailable")),
            },
        },
        "patch": {
            "operationId": "tusAppend", "tags": ["resumable"], "summary": "Send the next chunk (tus PATCH)",
            "description": "The body goes at Upload-Offset, which must be the upload's offset. The new offset is "
                           "on stable storage before it is answered. The chunk that completes the upload answers "
                           "X-File-Url and X-Owner-Token: the file is hashed, deduplicated and stored like any upload. "
                           + TUS_PROSE_HEADERS,
            "parameters": pr("TusResumableRequest", "UploadOffsetRequest", "UploadLengthPatch"),
            "requestBody": {"required": True, "content": {"application/offset+octet-stream": {"schema": binary}}},
            "responses": {
                "204": resp("Stored.", None, {"Upload-Offset": "UploadOffset", "Upload-Expires": "UploadExpires",
                                              "Tus-Resumable": "TusResumable", "X-File-Url": "XFileUrl",
                                              "X-Owner-Token": "XOwnerToken"}),
                **R((400, "TusBadRequest"), (404, "TusNotFound"), (409, "TusOffsetMismatch"), (410, "TusGone"),
                    (412, "TusPreconditionFailed"), (413, "TusTooLarge"), (415, "TusUnsupportedMediaType"),
                    (423, "TusLocked"), (460, "TusChecksumMismatch"), (503, "Unavailable"),
                    (507, "TusInsufficientStorage")),
            },
        },
        "delete": {
            "operationId": "tusTerminate", "tags": ["resumable"], "summary": "End an upload and free its bytes",
            "description": "tus termination. A completed upload's file stays (delete it with its owner token).",
            "parameters": pr("TusResumableRequest"),
            "responses": {
                "204": resp("Terminated.", None, {"Tus-Resumable": "TusResumable"}),
                **R((400, "TusBadRequest"), (404, "TusNotFound"), (410, "TusGone"), (412, "TusPreconditionFailed"),
                    (423, "TusLocked"), (503, "Unavailable")),
            },
        },
    },
    P + "/openapi.json": {
        "get": {
            "operationId": "openapi", "tags": ["operations"], "summary": "This document",
            "responses": {"200": resp("OpenAPI 3.1.", {"type": "object"})},
        }
    },
    "/healthz": {
        "get": {"operationId": "healthz", "tags": ["operations"], "summary": "Liveness: the process answers",
                "responses": {"200": resp("Alive.", "Health")}},
    },
    "/readyz": {
        "get": {"operationId": "readyz", "tags": ["operations"],
                "summary": "Readiness: database, cache (Redis), broker, storage",
                "description": "A check that does not apply (no Redis cache, no broker) is `not used`.",
                "responses": {"200": resp("Ready.", "Ready"), **R((503, "Unavailable"))}},
    },
    "/metrics": {
        "get": {"operationId": "metrics", "tags": ["operations"], "summary": "Prometheus metrics (nginx: loopback only)",
                "responses": {"200": resp("Prometheus text exposition format.", {"type": "string"}, content_type="text/plain")}},
    },
}

doc = {
    "openapi": "3.1.0",
    "info": {
        "title": "vimeo_api",
        "version": "1.0",
        "summary": "File drop and delivery API",
        "description": "Upload a file, optionally with a password, a download limit and an expiry; get back an "
                       "unguessable URL. Every error is JSON (`Error`). Every answer carries X-Request-Id.",
    },
    "servers": [{"url": "/"}],
    "tags": [{"name": n} for n in ("files", "resumable", "downloads", "versions", "tokens", "operators", "operations")],
    "paths": paths,
    "components": {
        "schemas": schemas,
        "responses": responses,
        "parameters": parameters,
        "headers": headers,
        "securitySchemes": {
            "passwordBasic": {"type": "http", "scheme": "basic",
                              "description": "A file's password as the HTTP Basic password (user name ignored)."},
            "operatorBearer": {"type": "http", "scheme": "bearer",
                               "description": "An operator token from `manage.py tokens create`, with scopes."},
        },
    },
}



def render() -> str:
    """The document as written to vimeo_api/openapi.json."""
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
