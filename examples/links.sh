#!/usr/bin/env bash
# One-time links that work for people: the landing page, link previews, resuming a cut-off
# download, the owner's list of downloads, and why a 410.   usage: examples/links.sh BASE_URL
source "$(dirname "$0")/_common.sh"

report="$(sample report.txt 'quarterly numbers, 0123456789')"
call 201 -X PUT -F "file=@$report" "$API/file"
url="$API/file/$(field filehash)"
owner="$(field owner_token)"

# A browser gets a page naming the file (and uses no download); so does a link preview.
call 200 -H 'Accept: text/html,application/xhtml+xml,*/*;q=0.8' "$url"
expect_header Content-Type '^text/html'
expect_header Content-Security-Policy "^default-src 'none'"
grep -q 'report.txt' "$BODY"
call 200 -A 'Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)' "$url"
expect_header Content-Type '^text/html'
call 200 -H 'Sec-Purpose: prefetch' "$url"
expect_header Content-Type '^text/html'

# curl gets the bytes, here only the first ten: the one download is used ...
call 206 -H 'Range: bytes=0-9' "$url"
expect_body 'quarterly '
# ... and the same client may fetch the rest within the resume window, without another.
call 206 -H 'Range: bytes=10-' "$url"
expect_body 'numbers, 0123456789'
# Anything else is 410, and says why.
call 410 "$url"
grep -q '"reason":"downloaded"' "$BODY"

# The owner sees both transfers: the cut-off one and its resumption.
call 200 -H "X-Owner-Token: $owner" "$url/downloads"
grep -q '"resumed":true' "$BODY"
grep -q '"resumed":false' "$BODY"

# The page's Download button is a form POST to the same URL: the counted download.
call 201 -X PUT -F "file=@$report" -F password=s3cret "$API/file"
url="$API/file/$(field filehash)"
call 401 -X POST -d password=wrong "$url"
call 200 -X POST -d password=s3cret "$url"
expect_header Content-Disposition '^attachment'
expect_body 'quarterly numbers, 0123456789'
call 410 -X POST -d password=s3cret "$url"
