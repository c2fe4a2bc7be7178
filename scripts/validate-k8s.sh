#!/usr/bin/env bash
# Checks deploy/kubernetes without a cluster: renders every kustomization (overlays/*, setup-job,
# backfill-job, secrets), validates each rendered object against the Kubernetes schemas that
# kubernetes-validate ships (offline, strict: unknown fields fail), and scans them with checkov.
# Installs what is missing and nothing else: a kustomize from apt only when neither kubectl nor
# kustomize can render, the pinned kubernetes-validate into .venv, the pinned checkov into
# .venv-deploy (its many dependencies stay out of the fixture tools' .venv).
# Exits non-zero on any render, schema or policy failure. K8S_VERSION picks the schema version.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=${K8S_VERSION:-1.37.0}
ROOT=deploy/kubernetes
REQ_VALIDATE=$ROOT/requirements-validate.txt
REQ_CHECKOV=$ROOT/requirements-checkov.txt
# Custom resources: no schema ships for them, so they are skipped by name and counted, never
# passed silently; any other kind without a schema (a typo in apiVersion) fails.
CRD_KINDS="keda.sh/v1alpha1/ScaledObject monitoring.coreos.com/v1/ServiceMonitor"

say() { printf 'validate-k8s: %s\n' "$*"; }
die() { printf 'validate-k8s: error: %s\n' "$*" >&2; exit 1; }

# --- renderer: kubectl's bundled kustomize (v5 on these machines), else a kustomize binary ---
render_cmd=()
if command -v kubectl >/dev/null 2>&1 && kubectl version --client 2>/dev/null | grep -q 'Kustomize Version: v[5-9]'; then
  render_cmd=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1; then
  kustomize version 2>/dev/null | grep -q 'v[5-9]' || die "the installed kustomize is older than v5 (components need it); not replacing it"
  render_cmd=(kustomize build)
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  say "no kubectl with kustomize v5 and no kustomize: installing Debian's kustomize"
  apt-get update -qq
  apt-cache show kustomize >/dev/null 2>&1 || die "this Debian release has no kustomize package; install kubectl >= 1.27 or kustomize v5"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kustomize >/dev/null
  render_cmd=(kustomize build)
else
  die "need kubectl >= 1.27 (bundled kustomize v5) or kustomize v5 on PATH"
fi

# --- pinned Python tools, reinstalled only when their requirements file changes ---
ensure_venv() {
  local dir=$1 req=$2 stamp
  stamp=$dir/.$(basename "$req")
  if [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then return; fi
  if [ ! -x "$dir/bin/pip" ]; then
    if ! python3 -m venv "$dir" 2>/dev/null; then
      [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || die "python3 -m venv failed: install python3-venv"
      say "installing python3-venv"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$dir"
    fi
  fi
  say "installing $(basename "$req") into $dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
}
ensure_venv .venv "$REQ_VALIDATE"
ensure_venv .venv-deploy "$REQ_CHECKOV"

# --- render ---
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
targets=()
for dir in "$ROOT"/overlays/*/ "$ROOT"/setup-job/ "$ROOT"/backfill-job/ "$ROOT"/secrets/; do
  targets+=("${dir%/}")
done
render_failed=0
for dir in "${targets[@]}"; do
  name=${dir#"$ROOT"/}
  if ! "${render_cmd[@]}" "$dir" >"$out/${name//\//__}.yaml" 2>"$out/render.err"; then
    printf 'RENDER FAILED %s:\n' "$name"; cat "$out/render.err"
    render_failed=1
  fi
done
rm -f "$out/render.err"
((render_failed == 0)) || die "rendering failed"

# --- schemas ---
schema_rc=0
.venv/bin/python - "$out" "$K8S_VERSION" "$CRD_KINDS" <<'PY' || schema_rc=$?
import glob, os, sys
import yaml
import kubernetes_validate as kv

out, version, crds = sys.argv[1], sys.argv[2], set(sys.argv[3].split())
bad = 0
total = {"valid": 0, "crd": 0, "bad": 0}
for path in sorted(glob.glob(os.path.join(out, "*.yaml"))):
    name = os.path.basename(path)[:-5].replace("__", "/")
    valid, skipped, errors = 0, [], []
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for doc in docs:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if f"{doc.get('apiVersion')}/{doc.get('kind')}" in crds:
            skipped.append(doc["kind"])
            continue
        try:
            kv.validate(doc, version, strict=True)
            valid += 1
        except kv.SchemaNotFoundError:
            errors.append(f"{what}: no schema for {doc.get('apiVersion')} {doc.get('kind')} (typo, or a CRD missing from CRD_KINDS)")
        except kv.ValidationError as e:
            where = "/".join(str(p) for p in e.path) if hasattr(e, "path") else ""
            errors.append(f"{what}: {where}: {e.message}")
    note = f", {len(skipped)} CRD skipped ({', '.join(skipped)}: no schema offline)" if skipped else ""
    print(f"  schema  {name:38s} {len(docs):2d} objects: {valid} valid, {len(errors)} invalid{note}")
    for err in errors:
        print(f"          INVALID {err}")
    total["valid"] += valid; total["crd"] += len(skipped); total["bad"] += len(errors)
print(f"  schema  total: {total['valid']} valid, {total['bad']} invalid, {total['crd']} CRD objects skipped (Kubernetes {version}, strict)")
sys.exit(1 if total["bad"] else 0)
PY

# --- policy scan (skips are annotations on the objects: checkov.io/skipN: CHECK=reason) ---
scan_rc=0
.venv-deploy/bin/checkov -d "$out" --framework kubernetes --skip-download --output json \
  >"$out/checkov.json" 2>"$out/checkov.err" || true
.venv/bin/python - "$out/checkov.json" "$out/checkov.err" <<'PY' || scan_rc=$?
import collections, json, os, sys

try:
    with open(sys.argv[1]) as f:
        report = json.load(f)
except (OSError, ValueError):
    sys.stderr.write(open(sys.argv[2]).read())
    print("  checkov did not produce a report"); sys.exit(1)
reports = report if isinstance(report, list) else [report]
per = collections.defaultdict(lambda: [0, 0, 0])
failed, skipped, parse_errors = [], set(), 0
for r in reports:
    if "results" not in r:  # an empty scan reports only a summary
        continue
    parse_errors += r.get("summary", {}).get("parsing_errors", 0)
    for kind, idx in (("passed_checks", 0), ("failed_checks", 1), ("skipped_checks", 2)):
        for c in r["results"].get(kind, []):
            name = os.path.basename(c["file_path"])[:-5].replace("__", "/")
            per[name][idx] += 1
            if idx == 1:
                failed.append(f"{c['check_id']} {c['resource']} ({name}): {c['check_name']}")
            if idx == 2:
                kind, *_, res = c["resource"].split(".")
                skipped.add(f"{c['check_id']} {kind}/{res}: {c['check_result'].get('suppress_comment', '')}")
for name in sorted(per):
    p, f, s = per[name]
    print(f"  checkov {name:38s} {p} passed, {f} failed, {s} skipped")
t = [sum(v[i] for v in per.values()) for i in range(3)]
print(f"  checkov total: {t[0]} passed, {t[1]} failed, {t[2]} skipped, {parse_errors} parsing errors")
for s in sorted(skipped):
    print(f"          skipped {s}")
for f in failed:
    print(f"          FAILED {f}")
sys.exit(1 if failed or parse_errors or not per else 0)
PY

if ((schema_rc || scan_rc)); then
  die "deploy/kubernetes has problems (above)"
fi
say "ok: ${#targets[@]} kustomizations rendered, schemas and policies pass"
