#!/usr/bin/env bash
# Conditional and range requests (RFC 9110).   usage: examples/conditional.sh BASE_URL
source "$(dirname "$0")/_common.sh"

digits="$(sample digits.txt '0123456789abcdefghij')"
call 201 -X PUT -F "file=@$digits" -F max_downloads=0 "$API/file"
url="$API/file/$(field filehash)"
etag="$(etag)"

call 200 -I "$url"
last_modified="$(header Last-Modified)"
expect_header ETag "^$etag\$"
expect_header Accept-Ranges '^bytes$'

call 304 -H "If-None-Match: $etag" "$url"                        # unchanged: 304, no download
call 304 -H "If-Modified-Since: $last_modified" "$url"
call 200 -H 'If-None-Match: "something-else"' "$url"
call 412 -H 'If-Match: "something-else"' "$url"                  # precondition failed
call 412 -H 'If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT' "$url"
call 200 -H "If-Match: $etag" "$url"

call 206 -H 'Range: bytes=0-9' "$url"                            # the first ten bytes
expect_body '0123456789'
expect_header Content-Range '^bytes 0-9/20$'
call 206 -H 'Range: bytes=-5' "$url"                             # the last five
expect_body 'fghij'
call 206 -H 'Range: bytes=0-1,10-11' "$url"                      # two ranges: multipart/byteranges
expect_header Content-Type '^multipart/byteranges'
call 416 -H 'Range: bytes=100-200' "$url"                        # past the end
expect_header Content-Range '^bytes \*/20$'
call 206 -H 'Range: bytes=0-3' -H "If-Range: $etag" "$url"      # the range, as the ETag holds
call 200 -H 'Range: bytes=0-3' -H 'If-Range: "stale"' "$url"    # the whole file otherwise
