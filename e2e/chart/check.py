#!/usr/bin/env python3
"""Checks for the vflow chart, run by lint.sh and test.sh in the venv of lib.sh.

  check.py validate RENDERED.yaml --crds DIR|FILE... [--kube-version 1.37.0] [--expect KIND...]
      Every object of a `helm template` output: built-in kinds against the Kubernetes
      JSON schemas of kubernetes-validate (strict: unknown fields fail); kinds defined
      by a CRD in DIR (ours, prometheus-operator's) against that CRD's
      openAPIV3Schema, made strict the same way. A kind neither knows fails.
  check.py rbac RENDERED.yaml MANIFEST.yaml
      The chart's ClusterRole and Role rules equal manifests/rbac/operator.yaml's.
  check.py deployment RENDERED.yaml [NAME=VALUE]...
      The operator Deployment: restricted security, its token mounted, downward API,
      probes and ports, and the env (NAME=VALUE: set to VALUE; a secret reference as
      <secret:NAME/KEY>; NAME=<unset>: not set).
  check.py files RENDERED.yaml CHART
      The PrometheusRule's spec is files/alerts.yaml and the dashboards ConfigMap has
      every files/dashboards/*.json, verbatim.
  check.py env < DEPLOYMENT.json
      The operator container's environment as `export NAME=VALUE` lines (values only:
      a Secret reference fails; downward API ones are left to the caller).
  check.py audit AUDIT.log USER RENDERED.yaml --allow-unused FILE
      Which (group, resource, verb) USER used per the API server's audit log, against
      the rules granted: fails on a forbidden request, and on a granted verb that was
      never used unless FILE names it with the reason.
"""

import argparse
import json
import sys
from pathlib import Path

import jsonschema
import yaml


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------- validate

def strict_openapi(schema):
    """A CRD's structural openAPIV3Schema as a strict JSON schema: objects with
    `properties` and no `additionalProperties` or x-kubernetes-preserve-unknown-fields
    reject unknown fields (what the API server's pruning would silently drop), and
    int-or-string takes both."""
    if isinstance(schema, list):
        return [strict_openapi(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_openapi(v) for k, v in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable"):
        t = out.get("type")
        if isinstance(t, str):
            out["type"] = [t, "null"]
    preserve = out.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def crd_schemas(dirs):
    """(apiVersion, kind) -> strict schema, from CRD files and every *.yaml of dirs."""
    schemas = {}
    for d in dirs:
        paths = sorted(Path(d).glob("*.yaml")) if Path(d).is_dir() else [Path(d)]
        for path in paths:
            for doc in load_docs(path):
                if doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for v in spec["versions"]:
                    if not v.get("served", True):
                        continue
                    s = strict_openapi(v["schema"]["openAPIV3Schema"])
                    # metadata is the API server's: leave it loose below the names.
                    s.setdefault("properties", {})["metadata"] = {"type": "object"}
                    schemas[(f"{spec['group']}/{v['name']}", spec["names"]["kind"])] = s
    return schemas


def check_metadata(doc, where):
    meta = doc.get("metadata") or {}
    name = meta.get("name", "")
    if not name or len(name) > 253:
        fail(f"{where}: metadata.name {name!r} is empty or too long")
    for field in ("labels", "annotations"):
        for k, v in (meta.get(field) or {}).items():
            if not isinstance(v, str):
                fail(f"{where}: metadata.{field}[{k}] is {type(v).__name__}, not a string")
    for k, v in (meta.get("labels") or {}).items():
        if len(v) > 63:
            fail(f"{where}: label {k}={v!r} is longer than 63 characters")


def cmd_validate(args):
    import kubernetes_validate  # in the venv

    crds = crd_schemas(args.crds)
    docs = load_docs(args.rendered)
    if not docs:
        fail(f"{args.rendered}: no objects")
    seen = set()
    for doc in docs:
        kind, api = doc.get("kind"), doc.get("apiVersion")
        where = f"{args.rendered}: {kind} {doc.get('metadata', {}).get('name')}"
        check_metadata(doc, where)
        if (api, kind) in crds:
            errors = sorted(
                jsonschema.Draft7Validator(crds[(api, kind)]).iter_errors(doc),
                key=lambda e: list(e.path),
            )
            if errors:
                for e in errors:
                    print(f"  {'.'.join(map(str, e.path))}: {e.message}", file=sys.stderr)
                fail(f"{where}: does not match its CRD ({api})")
            how = "CRD schema"
        else:
            try:
                kubernetes_validate.validate(doc, args.kube_version, strict=True)
            except kubernetes_validate.SchemaNotFoundError as e:
                fail(f"{where}: no schema for {api} {kind} in Kubernetes {args.kube_version} nor a CRD: {e.message}")
            except kubernetes_validate.ValidationError as e:
                path = ".".join(map(str, e.path))
                fail(f"{where}: {path}: {e.message}")
            how = f"Kubernetes {args.kube_version}"
        seen.add(kind)
        print(f"  ok  {kind:<22} {doc['metadata']['name']:<32} ({how})")
    missing = set(args.expect or []) - seen
    if missing:
        fail(f"{args.rendered}: expected kinds not rendered: {sorted(missing)}")


# ---------------------------------------------------------------- rbac

def normalized_rules(rules):
    out = set()
    for r in rules or []:
        for g in r.get("apiGroups", [""]):
            for res in r.get("resources", []):
                for v in r.get("verbs", []):
                    names = tuple(sorted(r.get("resourceNames", [])))
                    out.add((g, res, v, names))
    return out


def roles(docs):
    found = {}
    for d in docs:
        if d.get("kind") in ("ClusterRole", "Role"):
            if d["kind"] in found:
                fail(f"more than one {d['kind']}: compare which?")
            found[d["kind"]] = normalized_rules(d.get("rules"))
    return found


def show(rules):
    return "\n".join(f"    {g or 'core'}/{r} {v}" + (f" {list(n)}" if n else "") for g, r, v, n in sorted(rules))


def cmd_rbac(args):
    chart, manifest = roles(load_docs(args.rendered)), roles(load_docs(args.manifest))
    for kind in ("ClusterRole", "Role"):
        if kind not in chart or kind not in manifest:
            fail(f"{kind} missing in {'the chart' if kind not in chart else args.manifest}")
        extra, lacking = chart[kind] - manifest[kind], manifest[kind] - chart[kind]
        if extra or lacking:
            if extra:
                print(f"  the chart's {kind} grants more than {args.manifest}:\n{show(extra)}", file=sys.stderr)
            if lacking:
                print(f"  the chart's {kind} lacks, from {args.manifest}:\n{show(lacking)}", file=sys.stderr)
            fail(f"the chart's {kind} rules differ from {args.manifest}: update charts/vflow/templates/rbac.yaml")
        print(f"  ok  {kind}: {len(chart[kind])} (group, resource, verb) grants, the same as {args.manifest}")


def cmd_rbac_scoped(args):
    """With operator.watchNamespace: no cluster-wide grant; the manifest's ClusterRole
    rules are a Role in that namespace, bound to the operator's ServiceAccount."""
    docs = load_docs(args.rendered)
    manifest = roles(load_docs(args.manifest))["ClusterRole"]
    cluster = [d for d in docs if d.get("kind") in ("ClusterRole", "ClusterRoleBinding")]
    if cluster:
        fail(f"cluster-wide grants with watchNamespace {args.namespace}: "
             f"{[d['metadata']['name'] for d in cluster]}")
    scoped = [d for d in docs if d.get("kind") == "Role" and d["metadata"].get("namespace") == args.namespace]
    if len(scoped) != 1:
        fail(f"want one Role in {args.namespace}, rendered {len(scoped)}")
    rules = normalized_rules(scoped[0].get("rules"))
    if rules != manifest:
        fail(f"the Role in {args.namespace} differs from the manifest's ClusterRole:\n"
             f"  more:\n{show(rules - manifest)}\n  less:\n{show(manifest - rules)}")
    bound = [d for d in docs if d.get("kind") == "RoleBinding" and d["metadata"].get("namespace") == args.namespace
             and d.get("roleRef", {}).get("name") == scoped[0]["metadata"]["name"]]
    if len(bound) != 1:
        fail(f"want one RoleBinding of that Role in {args.namespace}, rendered {len(bound)}")
    print(f"  ok  Role in {args.namespace}: {len(rules)} grants, the manifest's ClusterRole rules; nothing cluster-wide")


# ---------------------------------------------------------------- deployment

def one(docs, kind):
    found = [d for d in docs if d.get("kind") == kind]
    if len(found) != 1:
        fail(f"want one {kind}, rendered {len(found)}")
    return found[0]


def cmd_deployment(args):
    docs = load_docs(args.rendered)
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    problems = []

    def want(cond, what):
        if not cond:
            problems.append(what)

    psc = pod.get("securityContext", {})
    want(psc.get("runAsNonRoot") is True, "pod runAsNonRoot")
    want(psc.get("runAsUser") in (65532, 10001), "pod runAsUser 65532 or 10001")
    want(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccomp RuntimeDefault")
    want(pod.get("automountServiceAccountToken") is True, "the ServiceAccount token mounted (the operator needs it)")
    sa = one(docs, "ServiceAccount")
    want(pod.get("serviceAccountName") == sa["metadata"]["name"], "serviceAccountName is the chart's ServiceAccount")
    want(not pod.get("hostNetwork") and not pod.get("hostPID"), "no host namespaces")
    (c,) = pod["containers"]
    sc = c.get("securityContext", {})
    want(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    want(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    want(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
    want(not sc.get("privileged"), "not privileged")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    want(ports.get("metrics") == 8080, "port metrics 8080")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet", {})
        want(get.get("path") == path and get.get("port") in ("metrics", 8080), f"{probe} GET {path} on 8080")
    want("memory" in c.get("resources", {}).get("limits", {}), "a memory limit")
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = f"<secret:{ref['name']}/{ref['key']}>"
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = f"<field:{e['valueFrom']['fieldRef']['fieldPath']}>"
    want(env.get("POD_NAME") == "<field:metadata.name>", "POD_NAME from the downward API")
    want(env.get("POD_NAMESPACE") == "<field:metadata.namespace>", "POD_NAMESPACE from the downward API")
    want(env.get("VFLOW_OPERATOR_HTTP_ADDR") == "0.0.0.0:8080", "VFLOW_OPERATOR_HTTP_ADDR 0.0.0.0:8080")
    if "VFLOW_OPERATOR_GPU_SHARING" in env:
        try:
            json.loads(env["VFLOW_OPERATOR_GPU_SHARING"])
        except ValueError as e:
            problems.append(f"VFLOW_OPERATOR_GPU_SHARING is not JSON: {e}")
    for spec in args.env:
        name, value = spec.split("=", 1)
        if value == "<unset>":
            want(name not in env, f"{name} not set (is {env.get(name)!r})")
            continue
        got = env.get(name)
        if name == "VFLOW_OPERATOR_GPU_SHARING" and got is not None:
            same = json.loads(got) == json.loads(value)
        else:
            same = got == value
        want(same, f"{name}={value} (is {got!r})")
    if env.get("VFLOW_S3_CREDENTIALS_DIR"):
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        m = mounts.get(env["VFLOW_S3_CREDENTIALS_DIR"])
        want(m is not None and m.get("readOnly") is True, "the S3 credentials Secret mounted read-only")
    if problems:
        fail(f"{args.rendered}: the Deployment lacks:\n    " + "\n    ".join(problems))
    print(f"  ok  Deployment: restricted security, token, probes, ports, {len(env)} env checked against {len(args.env)} expectations")


def cmd_files(args):
    docs = load_docs(args.rendered)
    chart = Path(args.chart)
    alerts = chart / "files/alerts.yaml"
    rule = one(docs, "PrometheusRule")
    if rule["spec"] != yaml.safe_load(alerts.read_text()):
        fail("the PrometheusRule's spec is not files/alerts.yaml")
    text = alerts.read_text()
    if "{{" in text and "{{" not in json.dumps(rule["spec"]):
        fail("the alerts' {{ ... }} templates did not survive")
    if not rule["spec"].get("groups"):
        fail("files/alerts.yaml has no groups")
    cm = one(docs, "ConfigMap")
    files = sorted((chart / "files/dashboards").glob("*.json"))
    if sorted(cm.get("data", {})) != [f.name for f in files]:
        fail(f"the dashboards ConfigMap has {sorted(cm.get('data', {}))}, the chart {[f.name for f in files]}")
    for f in files:
        if json.loads(cm["data"][f.name]) != json.loads(f.read_text()):
            fail(f"dashboard {f.name} differs from the file")
    print(f"  ok  PrometheusRule = files/alerts.yaml ({len(rule['spec']['groups'])} groups); "
          f"ConfigMap has {len(files)} dashboards verbatim")


def cmd_env(_args):
    import shlex

    (c,) = json.load(sys.stdin)["spec"]["template"]["spec"]["containers"]
    for e in c.get("env", []):
        if "value" in e:
            print(f"export {e['name']}={shlex.quote(e['value'])}")
        elif "fieldRef" not in e.get("valueFrom", {}):
            fail(f"{e['name']}: a reference the test cannot resolve here")


# ---------------------------------------------------------------- audit

def cmd_audit(args):
    granted = set()
    for kind, rules in roles(load_docs(args.rendered)).items():
        granted |= {(g, r, v) for g, r, v, _ in rules}
    allowed_unused = {}
    for line in Path(args.allow_unused).read_text().splitlines():
        line = line.split("#", 1)
        reason = line[1].strip() if len(line) > 1 else ""
        fields = line[0].split()
        if fields:
            if len(fields) != 3 or not reason:
                fail(f"{args.allow_unused}: want 'GROUP RESOURCE VERB  # why', got {line}")
            g = "" if fields[0] == "core" else fields[0]
            allowed_unused[(g, fields[1], fields[2])] = reason
    used, forbidden, seen, test_requests = {}, [], set(), set()
    with open(args.log) as f:
        for line in f:
            ev = json.loads(line)
            # A watch still open when the log is read has only its ResponseStarted event.
            if ev.get("user", {}).get("username") != args.user or ev.get("stage") not in (
                "ResponseStarted",
                "ResponseComplete",
            ):
                continue
            if ev.get("userAgent", "").startswith("kubectl"):
                test_requests.add(ev["auditID"])  # the test's own `kubectl auth whoami`
                continue
            ref = ev.get("objectRef") or {}
            if not ref.get("resource"):
                continue  # non-resource URLs (/api, /version)
            seen.add(ev["auditID"])
            res = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            key = (ref.get("apiGroup", ""), res, ev["verb"])
            code = ev.get("responseStatus", {}).get("code", 0)
            if code == 403:
                forbidden.append(f"{ev['verb']} {ev.get('requestURI')}")
            used.setdefault(key, set()).add(code)
            if ev["verb"] == "patch" and code == 201:
                # A server-side apply that created the object: the API server authorized
                # `create` too (the log records only the request's verb, patch).
                used.setdefault(key[:2] + ("create",), set()).add("201 by apply")
    requests = len(seen)
    if requests == 0:
        fail(f"{args.log}: no request of {args.user}: is auditing on?")
    print(f"  {requests} requests by {args.user} (and {len(test_requests)} by the test's kubectl, left out); "
          "(group, resource, verb) used -> response codes:")
    for (g, r, v), codes in sorted(used.items()):
        mark = "ok " if (g, r, v) in granted else "!! "
        print(f"    {mark} {g or 'core'}/{r} {v}: {sorted(codes, key=str)}")
    if forbidden:
        fail("forbidden requests:\n    " + "\n    ".join(sorted(set(forbidden))))
    not_granted = set(used) - granted
    if not_granted:
        fail(f"used but not granted (and not forbidden?): {sorted(not_granted)}")
    unused = granted - set(used)
    explained = {k: allowed_unused[k] for k in unused if k in allowed_unused}
    unexplained = unused - set(explained)
    for (g, r, v), why in sorted(explained.items()):
        print(f"  granted, not exercised here: {g or 'core'}/{r} {v}  ({why})")
    stale = set(allowed_unused) - unused
    for g, r, v in sorted(stale & set(used)):
        print(f"  note: {g or 'core'}/{r} {v} is listed in {args.allow_unused} but was used: drop it there")
    for g, r, v in sorted(stale - set(used) - granted):
        print(f"  note: {g or 'core'}/{r} {v} is listed in {args.allow_unused} but not granted: drop it there")
    if unexplained:
        fail("granted but never used (remove from the ClusterRole/Role, or exercise it, or explain it in "
             f"{args.allow_unused}):\n" + show({(g, r, v, ()) for g, r, v in unexplained}))
    print(f"  ok  every request allowed; {len(granted) - len(unused)} of {len(granted)} grants used, "
          f"{len(explained)} unused with a reason")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate")
    v.add_argument("rendered")
    v.add_argument("--crds", nargs="+", default=[])
    v.add_argument("--kube-version", default="1.37.0")
    v.add_argument("--expect", nargs="*")
    r = sub.add_parser("rbac")
    r.add_argument("rendered")
    r.add_argument("manifest")
    rs = sub.add_parser("rbac-scoped")
    rs.add_argument("rendered")
    rs.add_argument("manifest")
    rs.add_argument("namespace")
    d = sub.add_parser("deployment")
    d.add_argument("rendered")
    d.add_argument("env", nargs="*")
    f = sub.add_parser("files")
    f.add_argument("rendered")
    f.add_argument("chart")
    sub.add_parser("env")
    a = sub.add_parser("audit")
    a.add_argument("log")
    a.add_argument("user")
    a.add_argument("rendered")
    a.add_argument("--allow-unused", required=True)
    args = p.parse_args()
    {
        "validate": cmd_validate,
        "rbac": cmd_rbac,
        "rbac-scoped": cmd_rbac_scoped,
        "deployment": cmd_deployment,
        "files": cmd_files,
        "env": cmd_env,
        "audit": cmd_audit,
    }[args.cmd](args)


if __name__ == "__main__":
    main()
