#!/usr/bin/env python3
"""Render and lint charts/cert-csi with the real Helm v4 engine, no helm binary.

The engine comes from PyPI's helm-python-sdk (hack/test installs it), which
embeds Helm's Go SDK as a shared library.

    hack/chart.py render [-f VALUES]... [--set-json K=JSON]... [--name N] [--namespace NS]
                         [--chart DIR] [--notes]
    hack/chart.py lint   [-f VALUES]... [--set-json K=JSON]...
    hack/chart.py deploy [--stdout]      # regenerate deploy/cert-csi.yaml

Exit codes: 0 success; 1 the chart or the values are wrong (lint errors, a
schema violation, a template error), with the reason on stderr; 2 bad usage;
3 the Helm engine is not installed or cannot load.

--chart renders another chart with the same engine (the tests render
cert-manager's csi-driver chart beside cert-csi's); --notes prints the
rendered NOTES.txt instead of the manifests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "cert-csi"
DEPLOY = REPO / "deploy" / "cert-csi.yaml"
# The chart's hooks (the default CertificateRequestPolicies, created by Helm
# after the release, once their CRD is served), for a kubectl install.
DEPLOY_POLICIES = REPO / "deploy" / "cert-csi-policies.yaml"
SDK = "helm-python-sdk==0.2.2"
RELEASE = "cert-csi"
NAMESPACE = "cert-csi"

EXIT_INVALID = 1
EXIT_NO_ENGINE = 3

# Helm's install order by kind (pkg/release InstallOrder); unknown kinds go
# last. Using it keeps deploy/cert-csi.yaml applicable top to bottom, the
# same way Helm would create the objects.
INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret",
    "SecretList", "ConfigMap", "StorageClass", "PersistentVolume",
    "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
    "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role",
    "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod",
    "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler",
    "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]


def fail(code: int, message: str) -> None:
    print(f"hack/chart.py: {message}", file=sys.stderr)
    sys.exit(code)


def engine() -> Any:
    """The helm_python module, or exit 3 saying how to install it."""
    try:
        import helm_python
    except ImportError as e:
        fail(
            EXIT_NO_ENGINE,
            f"the Helm engine is missing ({e}); install it with: pip install {SDK}",
        )
    try:
        helm_python.helm_sdk_version()
    except helm_python.HelmLibraryError as e:
        fail(EXIT_NO_ENGINE, f"the Helm engine's native library does not load: {e}")
    return helm_python


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Later values files win key by key, as with `helm -f a -f b`."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def user_values(helm: Any, files: list[str], set_json: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in files:
        try:
            text = Path(name).read_text()
        except OSError as e:
            fail(EXIT_INVALID, f"values file {name}: {e}")
        try:
            values = deep_merge(values, helm.values_from_yaml(text) or {})
        except helm.HelmError as e:
            fail(EXIT_INVALID, f"values file {name} is not valid YAML: {e}")
    for expression in set_json:
        try:
            values = deep_merge(values, helm.parse_set_json(expression))
        except helm.HelmError as e:
            fail(EXIT_INVALID, f"--set-json {expression}: {e}")
    return values


def documents(manifests: dict[str, str]) -> list[tuple[str, str, str]]:
    """(kind, source template, text) of every non-empty rendered document."""
    docs = []
    for source in sorted(manifests):
        if not source.endswith((".yaml", ".yml")):
            continue  # NOTES.txt and the like
        for text in manifests[source].split("\n---"):
            body = "\n".join(
                line for line in text.strip("\n").splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            )
            if not body:
                continue
            kind = next(
                (line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("kind:")),
                "",
            )
            docs.append((kind, source, text.strip("\n")))
    rank = {kind: i for i, kind in enumerate(INSTALL_ORDER)}
    # Stable: within a kind, template path order then document order.
    docs.sort(key=lambda d: rank.get(d[0], len(INSTALL_ORDER)))
    return docs


def render_templates(
    helm: Any, values: dict[str, Any], name: str, namespace: str, path: Path = CHART
) -> dict[str, str]:
    try:
        chart = helm.Chart.load(path)
    except helm.HelmError as e:
        fail(EXIT_INVALID, f"cannot load {path}: {e}")
    with chart:
        try:
            # Rendering validates against values.schema.json first, as
            # helm install does.
            return chart.render(values, name=name, namespace=namespace, is_install=True)
        except (helm.HelmValuesError, helm.HelmRenderError) as e:
            fail(EXIT_INVALID, f"the chart does not render with these values: {e}")


def notes(manifests: dict[str, str]) -> str:
    return "".join(text for source, text in manifests.items() if source.endswith("/NOTES.txt"))


def is_hook(text: str) -> bool:
    """Whether a rendered document carries Helm's hook annotation."""
    return any(line.strip().startswith("helm.sh/hook:") for line in text.splitlines())


def render(
    helm: Any,
    values: dict[str, Any],
    name: str,
    namespace: str,
    path: Path = CHART,
    hooks: str = "include",
) -> str:
    """The rendered documents in install order; `hooks` is include (as
    `helm template`), exclude (the release itself) or only."""
    manifests = render_templates(helm, values, name, namespace, path)
    out = []
    for _kind, source, text in documents(manifests):
        if (hooks == "exclude" and is_hook(text)) or (hooks == "only" and not is_hook(text)):
            continue
        out.append(f"---\n# Source: {source}\n{text}\n")
    return "".join(out)


def lint(helm: Any, values: dict[str, Any]) -> int:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    severities = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
    problems = 0
    for message in report.get("messages") or []:
        severity = message.get("severity", 0)
        print(f"[{severities.get(severity, severity)}] {message.get('path')}: {message.get('error')}")
        if severity >= 2:
            problems += 1
    for error in report.get("errors") or []:
        print(f"[ERROR] {error}")
        problems += 1
    print(f"linted {report.get('total_charts_linted', 0)} chart(s): {problems} problem(s)")
    return EXIT_INVALID if problems else 0


def deploy_text(helm: Any) -> str:
    header = (
        "# cert-csi, rendered from charts/cert-csi with its default values\n"
        f"# (release {RELEASE}, namespace {NAMESPACE}). Generated; do not edit.\n"
        "# Regenerate with: python3 hack/chart.py deploy\n"
        "# Install with: kubectl apply --server-side -f deploy/cert-csi.yaml\n"
        "# then, once the CRDs are served (kubectl wait --for=condition=Established\n"
        "# crd --all), kubectl apply --server-side -f deploy/cert-csi-policies.yaml\n"
        "---\n"
        "apiVersion: v1\n"
        "kind: Namespace\n"
        "metadata:\n"
        f"  name: {NAMESPACE}\n"
    )
    return header + render(helm, {}, RELEASE, NAMESPACE, hooks="exclude")


def deploy_policies_text(helm: Any) -> str:
    header = (
        "# cert-csi's default CertificateRequestPolicies (the chart's post-install\n"
        "# hooks), rendered with its default values. Generated; do not edit.\n"
        "# Regenerate with: python3 hack/chart.py deploy\n"
        "# Apply after deploy/cert-csi.yaml, once its CRDs are served:\n"
        "#   kubectl wait --for=condition=Established crd --all\n"
        "#   kubectl apply --server-side -f deploy/cert-csi-policies.yaml\n"
    )
    return header + render(helm, {}, RELEASE, NAMESPACE, hooks="only")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("render", "lint"):
        p = sub.add_parser(command)
        p.add_argument("-f", "--values", action="append", default=[], metavar="FILE")
        p.add_argument("--set-json", action="append", default=[], metavar="KEY=JSON")
        if command == "render":
            p.add_argument("--name", default=RELEASE)
            p.add_argument("--namespace", default=NAMESPACE)
            p.add_argument("--chart", type=Path, default=CHART, metavar="DIR")
            p.add_argument("--notes", action="store_true", help="print NOTES.txt only")
    p = sub.add_parser("deploy")
    p.add_argument("--stdout", action="store_true", help="print instead of writing the files")
    p.add_argument(
        "--part", choices=("release", "policies"), default="release",
        help="with --stdout: deploy/cert-csi.yaml (release) or deploy/cert-csi-policies.yaml",
    )
    args = parser.parse_args()

    helm = engine()
    if args.command == "render":
        values = user_values(helm, args.values, args.set_json)
        if args.notes:
            manifests = render_templates(helm, values, args.name, args.namespace, args.chart)
            sys.stdout.write(notes(manifests))
        else:
            sys.stdout.write(render(helm, values, args.name, args.namespace, args.chart))
    elif args.command == "lint":
        sys.exit(lint(helm, user_values(helm, args.values, args.set_json)))
    elif args.stdout:
        sys.stdout.write(deploy_text(helm) if args.part == "release" else deploy_policies_text(helm))
    else:
        for path, text in ((DEPLOY, deploy_text(helm)), (DEPLOY_POLICIES, deploy_policies_text(helm))):
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
