#!/usr/bin/env bash
# Short-lived signed download URLs.   usage: examples/tokens.sh BASE_URL
source "$(dirname "$0")/_common.sh"

doc="$(sample doc.txt 'signed and sealed')"
call 201 -X PUT -F "file=@$doc" -F password=s3cret -F max_downloads=0 "$API/file"
filehash="$(field filehash)"
owner="$(field owner_token)"

# With the owner token, for ten minutes.
call 201 -X POST -H "X-Owner-Token: $owner" -H 'Content-Type: application/json' \
  -d '{"expires_in": 600}' "$API/file/$filehash/tokens"
token="$(field token)"
echo "  expires at $(field expires_at)"
call 200 "$API/t/$token"                       # no password needed: the token is the grant
expect_body 'signed and sealed'
expect_header Cache-Control 'no-store'
call 200 -I "$API/t/$token"

# With the file's password instead (the default lifetime, 300 s).
call 201 -X POST -H 'X-Password: s3cret' "$API/file/$filehash/tokens"
call 401 -X POST "$API/file/$filehash/tokens"  # neither
call 401 "$API/t/${token}x"                   # tampered

# Changing the password revokes the links issued before; the owner can revoke all.
call 201 -X POST -H "X-Owner-Token: $owner" "$API/file/$filehash/tokens"
token="$(field token)"
call 200 -X PATCH -H "X-Owner-Token: $owner" -H 'Content-Type: application/json' \
  -d '{"password": "n3w s3cret"}' "$API/file/$filehash"
call 403 "$API/t/$token"                       # revoked by the password change
call 201 -X POST -H 'X-Password: n3w s3cret' "$API/file/$filehash/tokens"
token="$(field token)"
call 200 -X DELETE -H "X-Owner-Token: $owner" "$API/file/$filehash/tokens"
call 403 "$API/t/$token"                       # revoked by its owner
