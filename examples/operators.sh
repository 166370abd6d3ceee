#!/usr/bin/env bash
# The operator API, with a bearer token from `python manage.py tokens create`.
# usage: examples/operators.sh BASE_URL TOKEN   (or TOKEN in $VIMEO_OPERATOR_TOKEN)
source "$(dirname "$0")/_common.sh"
TOKEN="${2:-${VIMEO_OPERATOR_TOKEN:?give an operator token: manage.py tokens create --name me --scope files:read --scope files:write --scope stats:read --scope cache:purge}}"
auth=(-H "Authorization: Bearer $TOKEN")

call 401 "$API/files"                                        # no token
call 401 -H 'Authorization: Bearer not-a-token' "$API/stats"

for i in 1 2 3; do
  call 201 -X PUT -F "file=@$(sample "f$i.txt" "file $i")" -F max_downloads=0 "$API/file"
done
filehash="$(field filehash)"

# Page through the files two at a time.
call 200 "${auth[@]}" "$API/files?status=available&limit=2"
cursor="$(field next_cursor)"
[[ -n "$cursor" ]]
call 200 "${auth[@]}" "$API/files?status=available&limit=2&cursor=$cursor"
call 400 "${auth[@]}" "$API/files?limit=1000"

call 200 "${auth[@]}" "$API/stats"
grep -q '"bytes_served"' "$BODY"

# Purge cached metadata: one URL, then everything; each purge has a record.
call 202 "${auth[@]}" -H 'Content-Type: application/json' \
  -d "{\"type\": \"url\", \"items\": [\"$API/file/$filehash\"]}" "$API/purge"
purge_id="$(field purge_id)"
call 202 "${auth[@]}" -H 'Content-Type: application/json' -d '{"type": "all"}' "$API/purge"
call 200 "${auth[@]}" "$API/purge/$purge_id"

# An operator may delete any file (scope files:write).
call 202 -X DELETE "${auth[@]}" "$API/file/$filehash"
call 410 "$API/file/$filehash"
