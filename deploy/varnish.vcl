vcl 4.1;

# Varnish as an edge cache in front of vimeo_api's nginx: the role a CDN plays. This is a
# Jinja2 TEMPLATE: `python -m deploy.stack render-vcl` (deploy/stack.py, render_vcl)
# fills in the backend and the addresses that may ban; the tests run the result.
#
# What it does:
#   * keeps what the service says a shared cache may keep: public files
#     (s-maxage=3600) and published versions (immutable); every other answer is
#     private or no-store and passes through (Varnish's built-in rules);
#   * drops, on a BAN from the service (vimeo_api/edge.py: EDGE_PURGE_URLS), every
#     object whose Surrogate-Key holds one of the keys the BAN names: DELETE, a
#     replacement, a PATCH, a retired version, POST /purge;
#   * never turns a request the service counts into another one: a HEAD, a conditional
#     or a ranged request that misses the cache goes to the origin as it is (a full GET
#     in its place would use one of a limited file's downloads).

backend nginx {
    .host = "{{ backend_host }}";
    .port = "{{ backend_port }}";
    .connect_timeout = 5s;
    .first_byte_timeout = 600s;
    .between_bytes_timeout = 60s;
}

# Who may BAN or PURGE: the service's own machines, never the world.
acl purgers {
{% for address in purgers %}
    "{{ address }}";
{% endfor %}
}

sub vcl_recv {
    if (req.method == "BAN") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        # One or more keys as the service writes them (representation.surrogate_keys):
        # "vimeo" (everything) or vimeo-f-/vimeo-v- and 32 hex digits, space-separated.
        if (req.http.Surrogate-Key !~ "^vimeo(-[fv]-[0-9a-f]{32})?( vimeo-[fv]-[0-9a-f]{32})*$") {
            return (synth(400, "Bad Request"));
        }
        # An object's keys are words of its Surrogate-Key; "vimeo" matches every object
        # of the service (its other keys start with it too).
        ban("obj.http.Surrogate-Key ~ \b(" + regsuball(req.http.Surrogate-Key, " ", "|") + ")\b");
        return (synth(200, "Banned"));
    }
    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        return (purge);
    }
    # Preconditions the cache would not evaluate as the service does: the origin decides.
    if (req.http.If-Match || req.http.If-Unmodified-Since) {
        return (pass);
    }
    # Credentials (a password, an owner or operator token) are for the origin alone.
    if (req.http.X-Password || req.http.X-Owner-Token) {
        return (pass);
    }
    # Then Varnish's built-in rules: only GET and HEAD are looked up, and never with
    # Authorization or a Cookie.
}

sub vcl_miss {
    # A miss is fetched as a plain GET of the whole object. For anything else (a HEAD, a
    # conditional request, a Range), pass the request on as it is instead.
    if (req.method != "GET" || req.http.If-None-Match || req.http.If-Modified-Since
        || req.http.Range || req.http.If-Range) {
        return (pass);
    }
}

sub vcl_deliver {
    # The keys are the edge's business; whether this answer came from the cache is the
    # operator's (and the tests').
    unset resp.http.Surrogate-Key;
    if (obj.hits > 0) {
        set resp.http.X-Edge-Cache = "HIT";
    } else {
        set resp.http.X-Edge-Cache = "MISS";
    }
}
