# Schemathesis hooks for .ci/api-contract (loaded through SCHEMATHESIS_HOOKS), and the
# check that ends the run (`python schemathesis_hooks.py coverage OPENAPI STATUSES`).
#
# - PEM bodies are `application/x-pem-file` only: the admin API no longer takes them as
#   `text/plain`, which a browser sends cross-site without asking (issue 18). PEM is text,
#   so schemathesis sends it with its text serializer.
# - Reaching what matters: a generated value rarely names an object that exists (a trust
#   domain, a pool with live PEs, a grant id), and a generated PEM body is never a CA's
#   bundle or CRL. So `before_call` points about half of the requests of each operation
#   at objects that exist: the fixtures .ci/api-contract seeded (RSP_ST_FIXTURES), or an
#   object it creates for the case just before (a namespace, grant, token... to delete).
#   The choice is a function of the generated case, so a seed replays the same run.
# - Sparing the fixtures: whatever the generator or the stateful phase picks, the run does
#   not delete or revoke its own admin token, the grants `enrpd init` made (the PEs'
#   register grant), the namespace `default`, the pool `echo` (its live PEs), the
#   federated trust domain `fed.test`, or identities of the local trust domain; such a
#   case is pointed at a fresh object instead. Deleting the local trust domain is left to
#   the server, which refuses it (409).
# - `after_call` records every answer (method, path template, status) in RSP_ST_STATUSES,
#   for the coverage check: every operation of the document must get a 2xx.
import collections
import itertools
import json
import os
import random
import sys
import threading
import zlib

import schemathesis

schemathesis.serializer.alias("application/x-pem-file", "text/plain")

# The share of the cases of an operation pointed at existing objects.
AIM = 0.5

_fixtures = None
_lock = threading.Lock()
_fresh = itertools.count(1)
_local = threading.local()


def fixtures():
    global _fixtures
    if _fixtures is None:
        with open(os.environ["RSP_ST_FIXTURES"]) as f:
            _fixtures = json.load(f)
        _fixtures["token_id"] = _fixtures["token"].split("_")[1]
    return _fixtures


def session():
    """A session of this thread for the hooks' own calls (not recorded, not checked)."""
    import requests

    if not hasattr(_local, "session"):
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {fixtures()['token']}"
        _local.session = s
    return _local.session


def call(method, path, **kwargs):
    """The JSON answer of a setup call, or None if it failed (the case then goes as generated)."""
    try:
        # `verify` on each request: requests lets REQUESTS_CA_BUNDLE override a session's.
        r = session().request(method, fixtures()["admin"] + path, timeout=10,
                              verify=fixtures()["ca"], **kwargs)
    except Exception as e:  # noqa: BLE001 - a failed setup only means an unaimed case
        print(f"hook setup {method} {path}: {e}", file=sys.stderr)
        return None
    if r.status_code // 100 != 2:
        print(f"hook setup {method} {path}: {r.status_code} {r.text[:200]}", file=sys.stderr)
        return None
    return r.json() if r.content else {}


def fresh(prefix):
    return f"{prefix}{next(_fresh)}"


def fresh_domain():
    """A trust domain added for this case (with fed.test's roots: any CA will do)."""
    name = fresh("fz") + ".test"
    roots = fixtures()["domains"]["fed.test"]["roots"]
    ok = call("POST", f"/v1/trust-domains?trust_domain={name}", data=roots,
              headers={"Content-Type": "application/x-pem-file"})
    return name if ok is not None else None


def fresh_namespace():
    name = fresh("fz-ns")
    return name if call("POST", "/v1/namespaces", json={"name": name}) is not None else None


def fresh_pool():
    name = fresh("fz-pool")
    ok = call("PUT", f"/v1/namespaces/default/pools/{name}", json={})
    return name if ok is not None else None


def fresh_grant():
    row = call("POST", "/v1/grants", json={
        "identity": f"spiffe://fed.test/{fresh('fz')}", "namespace": "default",
        "pools": "*", "actions": ["resolve"]})
    return row and row["id"]


def fresh_rule():
    row = call("POST", "/v1/default-namespaces", json={
        "identity": f"spiffe://fed.test/{fresh('fz')}", "namespace": "default"})
    return row and row["id"]


def fresh_token():
    row = call("POST", "/v1/tokens", json={"name": fresh("fz"), "role": "auditor"})
    return row and row["id"]


def live_pe():
    pes = call("GET", "/v1/namespaces/default/pools/echo/pool-elements")
    return pes[0]["pe_id"] if pes else None


# Grants that exist before the run (`enrpd init`'s): never deleted.
FIXTURE_GRANTS = {1, 2, 3, 4}


def protect(op, case):
    """Points a case that would destroy a fixture at a fresh object instead."""
    p = case.path_parameters or {}
    body = case.body
    if op == "DELETE /v1/tokens/{id}" and str(p.get("id")) == fixtures()["token_id"]:
        p["id"] = fresh_token() or "0000000000000000"
    elif op == "DELETE /v1/grants/{id}" and _int(p.get("id")) in FIXTURE_GRANTS:
        p["id"] = fresh_grant() or 999_999_999
    elif op == "DELETE /v1/namespaces/{namespace}" and p.get("namespace") == "default":
        p["namespace"] = fresh_namespace() or "fz-none"
    elif op == "DELETE /v1/namespaces/{namespace}/pools/{pool}" and p.get("pool") == "echo":
        p["pool"] = fresh_pool() or "fz-none"
    elif op == "PUT /v1/namespaces/{namespace}/pools/{pool}" and p.get("pool") == "echo":
        # Limits on `echo` could refuse its PEs' re-registrations.
        p["pool"] = "declared"
    elif op == "DELETE /v1/trust-domains/{name}" and p.get("name") == "fed.test":
        p["name"] = fresh_domain() or "fz-none.test"
    elif op == "POST /v1/revocations" and isinstance(body, dict):
        local = fixtures()["local_domain"]
        if body.get("trust_domain") in ("fed.test", local) and body.get("kind") == "trust_domain":
            body["trust_domain"] = fresh("fz") + ".test"
        spiffe = body.get("spiffe_id")
        if isinstance(spiffe, str) and spiffe.startswith(f"spiffe://{local}/"):
            body["spiffe_id"] = spiffe.replace(f"spiffe://{local}/", "spiffe://fed.test/", 1)


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def aim(op, case, rng):
    """Points a case at objects that exist, so that it can succeed."""
    p = case.path_parameters if case.path_parameters is not None else {}
    domains = fixtures()["domains"]
    pem = {"Content-Type": "application/x-pem-file"}
    if op in ("GET /v1/namespaces/{namespace}", "GET /v1/namespaces/{namespace}/pools"):
        p["namespace"] = "default"
    elif op in ("GET /v1/namespaces/{namespace}/pools/{pool}",
                "GET /v1/namespaces/{namespace}/pools/{pool}/pool-elements"):
        p.update(namespace="default", pool="echo")
    elif op == "PUT /v1/namespaces/{namespace}/pools/{pool}":
        p.update(namespace="default", pool=fresh("fz-pool"))
    elif op == "DELETE /v1/namespaces/{namespace}/pools/{pool}":
        p.update(namespace="default", pool=fresh_pool() or "fz-none")
    elif op == "DELETE /v1/namespaces/{namespace}/pools/{pool}/pool-elements/{pe_id}":
        p.update(namespace="default", pool="echo", pe_id=live_pe() or "0x0")
    elif op == "PUT /v1/namespaces/{namespace}/pools/{pool}/pool-elements/{pe_id}/drain":
        # For a day: a fixture PE must not reach its deadline during the run (its PE ID is
        # then refused, and its `rsp pe` exits); `DELETE …/drain` lifts it.
        p.update(namespace="default", pool="echo", pe_id=live_pe() or "0x0")
        case.body = {"deadline_secs": 86400}
    elif op == "DELETE /v1/namespaces/{namespace}/pools/{pool}/pool-elements/{pe_id}/drain":
        p.update(namespace="default", pool="echo", pe_id=live_pe() or "0x0")
    elif op == "DELETE /v1/namespaces/{namespace}":
        p["namespace"] = fresh_namespace() or "fz-none"
    elif op == "GET /v1/trust-domains/{name}":
        p["name"] = rng.choice(sorted(domains))
    elif op == "POST /v1/trust-domains":
        case.query = {"trust_domain": fresh("fz") + ".test"}
        bundle = domains["fed.test"]
        case.body = bundle["roots"] + (bundle["crl"] if rng.random() < 0.5 else "")
        case.headers = {**(case.headers or {}), **pem}
    elif op == "DELETE /v1/trust-domains/{name}":
        p["name"] = fresh_domain() or "fz-none.test"
    elif op == "PUT /v1/revocations/crls/{trust_domain}":
        name = rng.choice(sorted(domains))
        p["trust_domain"] = name
        case.body = domains[name]["crl"]
        case.headers = {**(case.headers or {}), **pem}
    elif op == "POST /v1/revocations":
        kind = rng.choice(["serial", "spiffe_id", "trust_domain"])
        if kind == "serial":
            case.body = {"kind": kind, "trust_domain": "fed.test",
                         "serial": f"{rng.getrandbits(64):016x}"}
        elif kind == "spiffe_id":
            case.body = {"kind": kind, "spiffe_id": f"spiffe://fed.test/pe/{fresh('fz')}"}
        else:
            case.body = {"kind": kind, "trust_domain": fresh_domain() or fresh("fz") + ".test"}
        if rng.random() < 0.5:
            case.body["reason"] = "contract run"
    elif op == "GET /v1/grants/{id}":
        p["id"] = rng.choice(sorted(FIXTURE_GRANTS))
    elif op == "DELETE /v1/grants/{id}":
        p["id"] = fresh_grant() or 999_999_999
    elif op in ("GET /v1/default-namespaces/{id}", "DELETE /v1/default-namespaces/{id}"):
        p["id"] = fresh_rule() or 999_999_999
    elif op == "DELETE /v1/tokens/{id}":
        p["id"] = fresh_token() or "0000000000000000"
    elif op == "POST /v1/audit/archives":
        # A few records past where the live log starts, if the head is that far: every
        # audited request of the run adds one, so it soon is.
        live = call("GET", "/v1/audit/archives")
        if live is not None:
            case.body = {"before_seq": live["live_from"] + rng.randint(1, 5)}
    elif op == "GET /v1/audit/archives/{name}":
        listed = call("GET", "/v1/audit/archives")
        names = [a["name"] for a in (listed or {}).get("archives", []) if a["downloadable"]]
        if names:
            p["name"] = rng.choice(names)
    if case.path_parameters is not None:
        case.path_parameters = p


def operation(case):
    return f"{case.operation.method.upper()} {case.operation.path}"


def negative(case):
    """Whether the case breaks the schema on purpose (it must then be refused as it is)."""
    meta = getattr(case, "meta", None)
    return meta is not None and str(meta.generation.mode) == "negative"


@schemathesis.hook
def before_call(context, case, kwargs):
    op = operation(case)
    # A function of the generated case, not of the clock or the thread: replayable.
    key = repr((op, case.path_parameters, case.query, case.body)).encode()
    rng = random.Random(zlib.crc32(key))
    if not negative(case) and rng.random() < AIM:
        aim(op, case, rng)
    protect(op, case)


# Operations whose body a schema cannot describe: a PEM bundle or CRL must be signed by a
# CA, which no pattern states. A schema-valid body they refuse as unusable (422) is no
# contract failure; every other check still applies to them.
PEM_BODIES = {"POST /v1/trust-domains", "PUT /v1/revocations/crls/{trust_domain}"}


def non_ascii(case):
    """Whether the case sends text outside ASCII (in its path, query or body)."""
    parts = (case.path_parameters, case.query, case.body)
    return any(ord(c) > 0x7e for c in json.dumps(parts, default=str, ensure_ascii=False))


@schemathesis.hook
def filter_failure(context, failure, case, response):
    code = getattr(failure, "code", None)
    refused_pem = code == "ST202" and operation(case) in PEM_BODIES and response.status_code == 422
    # Token names, reasons and pool handles: their patterns state printable ASCII, where a
    # length in characters is one in bytes (JSON Schema cannot count bytes); the server
    # also takes other UTF-8 text within its byte limits (crates/admin-api/src/schema.rs).
    # Every other pattern is the server's rule exactly, and refusals of what it forbids
    # are checked.
    accepted_utf8 = code == "ST201" and non_ascii(case) and response.status_code // 100 == 2
    return not (refused_pem or accepted_utf8)


@schemathesis.hook
def after_call(context, case, response):
    line = f"{operation(case)}\t{response.status_code}\n"
    with _lock, open(os.environ["RSP_ST_STATUSES"], "a") as f:
        f.write(line)


def coverage(openapi_path, statuses_path):
    """Prints operation -> statuses seen; 1 if an operation never got a 2xx."""
    with open(openapi_path) as f:
        doc = json.load(f)
    ops = [f"{m.upper()} {path}" for path, item in doc["paths"].items()
           for m in ("get", "put", "post", "delete", "patch") if m in item]
    seen = collections.defaultdict(collections.Counter)
    with open(statuses_path) as f:
        for line in f:
            op, status = line.rstrip("\n").rsplit("\t", 1)
            seen[op][status] += 1
    missing = []
    width = max(len(op) for op in ops)
    print(f"\n{'operation':<{width}}  statuses seen (count)")
    for op in sorted(ops, key=lambda o: (o.split(" ")[1], o)):
        counts = seen.get(op, collections.Counter())
        text = ", ".join(f"{s}×{n}" for s, n in sorted(counts.items())) or "no request"
        ok = any(s.startswith("2") for s in counts)
        print(f"{op:<{width}}  {text}{'' if ok else '   <- never 2xx'}")
        if not ok:
            missing.append(op)
    if missing:
        print(f"error: {len(missing)} operation(s) never answered with a 2xx: "
              + "; ".join(missing), file=sys.stderr)
        return 1
    print(f"every operation ({len(ops)}) answered with a 2xx at least once")
    return 0


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "coverage":
    sys.exit(coverage(sys.argv[2], sys.argv[3]))
