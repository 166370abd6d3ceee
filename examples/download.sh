#!/usr/bin/env bash
# Downloads, with each way of giving a password.   usage: examples/download.sh BASE_URL
source "$(dirname "$0")/_common.sh"

secret="$(sample secret.txt 'for your eyes only')"
call 201 -X PUT -F "file=@$secret" -F password=s3cret -F max_downloads=0 "$API/file"
url="$API/file/$(field filehash)"

call 401 "$url"                                   # no password
expect_header WWW-Authenticate '^Basic'
call 401 "$url?password=wrong"                    # a wrong one
call 200 "$url?password=s3cret"                   # the original way (?password=)
expect_body 'for your eyes only'
call 200 -H 'X-Password: s3cret' "$url"           # a header, kept out of access logs
call 200 -u ':s3cret' "$url"                      # HTTP Basic (the user name is ignored)
expect_header Cache-Control 'private'
call 200 -I -H 'X-Password: s3cret' "$url"        # HEAD: headers only, no download used
expect_header Content-Length '^18$'

# One download by default: the second GET is 410 Gone.
once="$(sample once.txt 'read once')"
call 201 -X PUT -F "file=@$once" "$API/file"
url="$API/file/$(field filehash)"
call 200 "$url"
expect_header Cache-Control 'no-store'
call 410 "$url"

call 404 "$API/file/00000000000000000000000000000000"
