#!/usr/bin/env bash
# Immutable published versions.   usage: examples/versions.sh BASE_URL
source "$(dirname "$0")/_common.sh"

page="$(sample page.txt 'version one')"
call 201 -X PUT -F "file=@$page" -F max_downloads=0 "$API/file"
url="$API/file/$(field filehash)"
owner="$(field owner_token)"

call 201 -X POST -H "X-Owner-Token: $owner" "$url/versions"
version_id="$(field version_id)"
etag="$(etag)"

# Replace the file's content: the version keeps the old one.
call 200 -X PUT -T "$(sample page2.txt 'version two')" -H "X-Owner-Token: $owner" "$url"
call 200 "$API/v/$version_id"
expect_body 'version one'
expect_header Cache-Control 'immutable'
call 304 -H "If-None-Match: $etag" "$API/v/$version_id"
call 200 -I "$API/v/$version_id"
call 404 "$API/v/00000000000000000000000000000000"
call 401 -X POST "$url/versions"              # the owner only
