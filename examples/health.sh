#!/usr/bin/env bash
# Probes, metrics and the API's own description.   usage: examples/health.sh BASE_URL
source "$(dirname "$0")/_common.sh"

call 200 "$BASE/healthz"                       # alive
call 200 "$BASE/readyz"                        # database, cache, broker, storage (503 names what is down)
grep -q '"status":"ready"' "$BODY"
call 200 "$BASE/metrics"                       # Prometheus (nginx admits loopback only)
grep -q '^vimeo_http_requests_total' "$BODY"
call 200 "$API/openapi.json"                   # OpenAPI 3.1
grep -q '"openapi"' "$BODY"
