# Sourced by every example: strict mode, the API's base URL from $1, and `call`, which
# runs curl and ends the script (exit 1) when the status is not the expected one.
set -euo pipefail

BASE="${1:?usage: $0 BASE_URL   (for example http://127.0.0.1:8000)}"
BASE="${BASE%/}"
API="$BASE/vimeo/api/v1.0"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
BODY="$WORK/body"
HEADERS="$WORK/headers"

# call EXPECTED_STATUS CURL_ARGUMENTS... — the body lands in $BODY, the headers in $HEADERS.
call() {
  local expected="$1" status
  shift
  # curl prints 000 when nothing answers; the check below reports it like any status.
  status="$(curl -sS -o "$BODY" -D "$HEADERS" -w '%{http_code}' "$@")" || true
  if [[ "$status" != "$expected" ]]; then
    echo "FAIL: expected $expected, got $status from: curl $*" >&2
    head -c 2000 "$BODY" >&2 || true
    echo >&2
    exit 1
  fi
  local url="${*: -1}"
  echo "$status ${url%%\?*}"  # the query may carry a password: not echoed
}

# field NAME — a string field of the last JSON body (the API answers compact JSON).
field() {
  sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" "$BODY" | head -n 1
}

# etag — the "etag" field of the last JSON body, as a header value ("<sha256>").
etag() {
  sed -n 's/.*"etag": *"\\"\([0-9a-f]*\)\\"".*/"\1"/p' "$BODY" | head -n 1
}

# header NAME — a header of the last answer.
header() {
  grep -i "^$1:" "$HEADERS" | head -n 1 | cut -d' ' -f2- | tr -d '\r'
}

# expect_header NAME PATTERN — fail unless the last answer's header matches (grep -E).
expect_header() {
  if ! header "$1" | grep -Eq "$2"; then
    echo "FAIL: header $1 is '$(header "$1")', expected /$2/" >&2
    exit 1
  fi
}

# expect_body TEXT — fail unless the last body is exactly TEXT.
expect_body() {
  if [[ "$(cat "$BODY")" != "$1" ]]; then
    echo "FAIL: body is '$(head -c 200 "$BODY")', expected '$1'" >&2
    exit 1
  fi
}

# A small file to upload.
sample() {
  printf '%s' "$2" > "$WORK/$1"
  echo "$WORK/$1"
}
