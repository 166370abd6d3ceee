#!/usr/bin/env bash
# Uploads: multipart (the original contract) with each option, and raw bodies with the
# options as headers.   usage: examples/upload.sh http://127.0.0.1:8000
source "$(dirname "$0")/_common.sh"

report="$(sample report.txt 'quarterly numbers')"

# Multipart, defaults: one download, the default expiry.
call 201 -X PUT -F "file=@$report" "$API/file"
echo "  url: $(field url)  (Location: $(header Location))"

# Multipart with options: a password, three downloads, gone after two hours.
call 201 -X PUT -F "file=@$report" -F password=s3cret -F max_downloads=3 -F expires_in=2h "$API/file"
grep -q '"max_downloads":3' "$BODY" && grep -q '"password_protected":true' "$BODY"

# Unlimited downloads for the longest expiry allowed: 30 days by default (MAX_EXPIRES_IN;
# "never" is refused unless an operator lifts the cap).
call 201 -X PUT -F "file=@$report" -F max_downloads=0 -F expires_in=30d "$API/file"
call 400 -X PUT -F "file=@$report" -F expires_in=never "$API/file"

# Raw body: curl -T appends the file's name to a URL ending in /.
call 201 -T "$report" "$API/upload/"
[[ "$(field filename)" == "report.txt" ]]

# Raw body with options as headers, and an explicit content type.
call 201 -T "$report" -H 'X-Password: s3cret' -H 'X-Max-Downloads: 0' -H 'X-Expires-In: 7d' \
  -H 'Content-Type: text/csv' "$API/upload/numbers.csv"
[[ "$(field content_type)" == "text/csv" ]]

# Invalid options are a 400 that says why.
call 400 -X PUT -F "file=@$report" -F max_downloads=-1 "$API/file"
call 400 -X PUT -F "file=@$report" -F expires_in=soon "$API/file"
