#!/usr/bin/env bash
# Managing a file with its owner token: replace, change options, delete.
# usage: examples/manage.sh BASE_URL
source "$(dirname "$0")/_common.sh"

v1="$(sample v1.txt 'first draft')"
v2="$(sample v2.txt 'second draft')"
call 201 -X PUT -F "file=@$v1" -F max_downloads=0 "$API/file"
url="$API/file/$(field filehash)"
owner="$(field owner_token)"
etag="$(etag)"

call 401 -X DELETE "$url"                                        # no owner token
call 403 -X DELETE -H 'X-Owner-Token: not-the-token' "$url"      # a wrong one

# Replace the content (raw body), guarded by the ETag we know: new SHA-256, new ETag.
call 200 -X PUT -T "$v2" -H "X-Owner-Token: $owner" -H "If-Match: $etag" "$url"
[[ "$(field status)" == "File Replaced" ]]
call 412 -X PUT -T "$v1" -H "X-Owner-Token: $owner" -H "If-Match: $etag" "$url"   # stale now
call 200 "$url"
expect_body 'second draft'

# Change the options: five downloads, a day, a password.
call 200 -X PATCH -H "X-Owner-Token: $owner" -H 'Content-Type: application/json' \
  -d '{"max_downloads": 5, "expires_in": "1d", "password": "s3cret"}' "$url"
grep -q '"password_protected":true' "$BODY"
call 401 "$url"
# ... and remove the password again.
call 200 -X PATCH -H "X-Owner-Token: $owner" -H 'Content-Type: application/json' -d '{"password": null}' "$url"
call 400 -X PATCH -H "X-Owner-Token: $owner" -H 'Content-Type: application/json' -d '{"colour": "blue"}' "$url"

# Delete: 202, and the URL is gone at once.
call 202 -X DELETE -H "X-Owner-Token: $owner" "$url"
[[ "$(field status)" == "File Deletion Scheduled" ]]
call 410 "$url"
