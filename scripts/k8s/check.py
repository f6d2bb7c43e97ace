"""The Kubernetes manifests under deploy/kubernetes, checked (issue 16).

    python check.py KUBERNETES_VALIDATE_BIN [TANDEM_BIN SMG_BIN]

1. Every manifest passes `kubernetes-validate --strict` against the Kubernetes version the
   validator is pinned to; the only kinds it may not know are the ones it has no schema for
   (Kustomize's Kustomization, the Gateway API's HTTPRoute, the Inference Extension's
   InferencePool), listed here.
2. Those, and how the pieces fit, are checked here against their published v1 APIs: every
   kustomization lists files that exist; the InferencePool has one target port, selects the
   replicas' labels and names the EPP's Service and port; the EPP serves that pool; the router
   discovers the replicas by the same labels and port; the replicas' termination grace period
   covers the preStop sleep plus tandem's --shutdown-grace-secs; probes hit /ready and /health;
   with the binaries given, every flag the replicas and the router are started with is one
   `tandem serve --help` and `smg launch --help` list.
Exits non-zero on the first failure. Needs PyYAML (a dependency of kubernetes-validate).
"""
import glob, os, re, subprocess, sys

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from testkit import check  # noqa: E402

VALIDATE = sys.argv[1]
BINS = sys.argv[2:4]
ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "kubernetes")
NO_SCHEMA = {"Kustomization", "HTTPRoute", "InferencePool"}


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


files = sorted(glob.glob(os.path.join(ROOT, "*", "*.yaml")))
check(len(files) >= 7, f"{len(files)} manifest files")
out = subprocess.run([VALIDATE, "--strict", *files], capture_output=True, text=True)
lines = (out.stdout + out.stderr).splitlines()
unknown = [l for l in lines if "Couldn't find schema" in l]
other = [l for l in lines if not l.startswith("INFO") and l not in unknown]
check(out.returncode == 0 and not other, "kubernetes-validate --strict: " + ("; ".join(other) or "all passed"))
kinds = {re.search(r"for kind (\w+)", l).group(1) for l in unknown}
check(kinds <= NO_SCHEMA, f"only {sorted(NO_SCHEMA)} lack a schema (found {sorted(kinds)})")
passed = sum(1 for l in lines if l.startswith("INFO") and "passed" in l)
check(passed >= 13, f"{passed} resources validated against their schema")

by_kind = {}
for f in files:
    for d in docs(f):
        by_kind.setdefault(d["kind"], []).append((f, d))

for f, k in by_kind["Kustomization"]:
    base = os.path.dirname(f)
    for r in k.get("resources", []):
        target = os.path.normpath(os.path.join(base, r))
        check(os.path.isfile(target) or os.path.isfile(os.path.join(target, "kustomization.yaml")),
              f"{os.path.relpath(f, ROOT)} lists {r}, which exists")


def deployment(name):
    return next(d for _, d in by_kind["Deployment"] if d["metadata"]["name"] == name)


def flags(container):
    """`--key=value` and `--key value` arguments as a dict (values of repeated keys listed)."""
    out, args, i = {}, container.get("args", []), 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            key, eq, value = a[2:].partition("=")
            if not eq:
                vals = []
                while i + 1 < len(args) and not args[i + 1].startswith("--"):
                    i += 1
                    vals.append(args[i])
                value = vals[0] if len(vals) == 1 else vals
            out[key] = value
        i += 1
    return out


replica = deployment("tandem")
labels = replica["spec"]["template"]["metadata"]["labels"]
pod = replica["spec"]["template"]["spec"]
c = pod["containers"][0]
f = flags(c)
check(c["args"][0] == "serve" and f.get("port") == "8000", "replicas run `tandem serve --port 8000`")
check(c["readinessProbe"]["httpGet"]["path"] == "/ready" and c["livenessProbe"]["httpGet"]["path"] == "/health",
      "readiness on /ready, liveness on /health")
check(c["resources"]["limits"].get("nvidia.com/gpu") == "1", "one GPU per replica")
pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
grace = float(f["shutdown-grace-secs"])
check(pod["terminationGracePeriodSeconds"] >= pre_stop + grace,
      f"termination grace {pod['terminationGracePeriodSeconds']} s covers preStop {pre_stop} s + drain {grace:g} s")
ann = replica["spec"]["template"]["metadata"]["annotations"]
check(ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
      and ann["prometheus.io/port"] == f["port"], "Prometheus scrapes /metrics on the serving port")
check('"enable_kv_cache_events": true' in f["kv-events-config"] and "tcp://*:5557" in f["kv-events-config"],
      "KV events on vLLM's default port")

router = deployment("tandem-router")
rf = flags(router["spec"]["template"]["spec"]["containers"][0])
selector = dict(s.split("=", 1) for s in rf["selector"])
check("service-discovery" in rf and selector.items() <= labels.items() and rf["service-discovery-port"] == f["port"],
      f"the router discovers pods labelled {selector} on port {rf['service-discovery-port']}")
check(rf["policy"] == "cache_aware", "the router routes cache-aware")
role = next(d for _, d in by_kind["Role"] if d["metadata"]["name"] == "tandem-router")
check(any("pods" in r["resources"] and {"list", "watch"} <= set(r["verbs"]) for r in role["rules"]),
      "the router may list and watch pods")

(_, pool), = by_kind["InferencePool"]
ps = pool["spec"]
check(pool["apiVersion"] == "inference.networking.k8s.io/v1", "InferencePool is the v1 API")
check(set(ps) == {"selector", "targetPorts", "endpointPickerRef"}, f"InferencePool spec has v1's fields: {sorted(ps)}")
check(ps["selector"]["matchLabels"].items() <= labels.items(), "the pool selects the replicas")
check(len(ps["targetPorts"]) == 1 and str(ps["targetPorts"][0]["number"]) == f["port"], "one target port: the serving port")
ref = ps["endpointPickerRef"]
check(ref.get("failureMode", "FailClose") in ("FailOpen", "FailClose"), "failureMode is FailOpen or FailClose")
epp_svc = next(d for _, d in by_kind["Service"] if d["metadata"]["name"] == ref["name"])
check(any(p["port"] == ref.get("portNumber", 9002) for p in epp_svc["spec"]["ports"]),
      f"the pool's picker {ref['name']}:{ref.get('portNumber', 9002)} is a Service port")
epp = deployment("tandem-epp")
ef = flags(epp["spec"]["template"]["spec"]["containers"][0])
check(ef["pool-name"] == pool["metadata"]["name"], "the EPP serves that pool")
config = next(d for _, d in by_kind["ConfigMap"] if d["metadata"]["name"] == "tandem-epp")
picker = yaml.safe_load(config["data"][os.path.basename(ef["config-file"])])
names = {p["type"] for p in picker["plugins"]}
refs = {p["pluginRef"] for prof in picker["schedulingProfiles"] for p in prof["plugins"]}
check(picker["kind"] == "EndpointPickerConfig" and refs <= names, "the EPP config's profiles use declared plugins")
(_, route), = by_kind["HTTPRoute"]
check(any(b["kind"] == "InferencePool" and b["name"] == pool["metadata"]["name"]
          for r in route["spec"]["rules"] for b in r["backendRefs"]), "the HTTPRoute sends traffic to the pool")

if BINS:
    tandem_help = subprocess.run([BINS[0], "serve", "--help"], capture_output=True, text=True).stdout
    smg_help = subprocess.run([BINS[1], "launch", "--help"], capture_output=True, text=True).stdout
    for name, used, text in [("tandem serve", f, tandem_help), ("smg launch", rf, smg_help)]:
        missing = [k for k in used if not re.search(rf"--{re.escape(k)}\b", text)]
        check(not missing, f"every flag given to {name} exists: {sorted(used)}" + (f" (unknown: {missing})" if missing else ""))
