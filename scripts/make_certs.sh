#!/usr/bin/env bash
# Make the credentials a TLS + SuperNode-authentication deployment needs:
#   CA          : ca.key / ca.crt (self-signed EC P-384, signs the SuperLink certificate)
#   SuperLink   : server.key / server.pem, SANs 127.0.0.1, ::1, localhost, superlink
#                 (+ any names in EXTRA_SANS, e.g. EXTRA_SANS="DNS:flwr.example.org,IP:10.0.0.5")
#   SuperNodes  : supernode_<i> (OpenSSH EC P-384 private key) + supernode_<i>.pub
#
# Usage: scripts/make_certs.sh [OUT_DIR] [NUM_SUPERNODES]
#        (defaults: $CERTS_DIR, i.e. .deploy/certs, and $NUM_SUPERNODES, i.e. 3).
#
# Existing SuperNode keys are kept, so a device keeps its identity (and the node id the
# SuperLink gave it at registration) when the script is run again; delete a key file to
# rotate it. The CA and server certificate are made once; FORCE=1 makes them again
# (needed after changing EXTRA_SANS). DAYS sets their validity [365].
#
# Tools: CERT_TOOL=openssl uses openssl + ssh-keygen (the commands Flower's docs show);
# CERT_TOOL=python uses the `cryptography` package that flwr itself depends on, so it
# works wherever flwr is installed. The default, auto, takes openssl when both tools
# exist. Both write the same formats.
#
# Why OpenSSH format for the node keys: flower-supernode reads
# --auth-supernode-private-key with cryptography's load_ssh_private_key, and
# `flwr supernode register` reads an OpenSSH public key on a NIST curve.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
[[ "${1:-}" == -h || "${1:-}" == --help ]] && { usage; exit 0; }
(($# <= 2)) || { usage >&2; exit 2; }

OUT_DIR="${1:-$CERTS_DIR}"
NUM="${2:-$NUM_SUPERNODES}"
DAYS="${DAYS:-365}"
EXTRA_SANS="${EXTRA_SANS:-}"
FORCE="${FORCE:-0}"
CERT_TOOL="${CERT_TOOL:-auto}"
require_int NUM_SUPERNODES "$NUM" 0
require_int DAYS "$DAYS" 1

case "$CERT_TOOL" in
    auto)
        if command -v openssl >/dev/null && command -v ssh-keygen >/dev/null; then
            CERT_TOOL=openssl
        else
            CERT_TOOL=python
        fi ;;
    openssl)
        for tool in openssl ssh-keygen; do
            command -v "$tool" >/dev/null ||
                die "'$tool' not found (apt-get install openssl openssh-client, or CERT_TOOL=python)"
        done ;;
    python) ;;
    *) die "CERT_TOOL must be auto, openssl or python, got '$CERT_TOOL'" ;;
esac

SANS="IP:127.0.0.1,IP:::1,DNS:localhost,DNS:superlink"
[[ -n "$EXTRA_SANS" ]] && SANS="$SANS,$EXTRA_SANS"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
# Private keys never belong in version control, wherever OUT_DIR lies.
[[ -f "$OUT_DIR/.gitignore" ]] || echo '*' > "$OUT_DIR/.gitignore"
# Keys must never be world-readable, not even for the instant between writing and chmod.
umask 077

if [[ "$CERT_TOOL" == openssl ]]; then
    cd "$OUT_DIR"
    if [[ ! -f ca.crt || ! -f server.pem || ! -f server.key || "$FORCE" == 1 ]]; then
        # CA (req -x509 adds basicConstraints CA:TRUE and key identifiers from openssl.cnf)
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out ca.key
        openssl req -new -x509 -key ca.key -sha256 -days "$DAYS" \
            -subj "/O=Flower/CN=FLEX-MoE deployment CA" -out ca.crt

        # SuperLink server certificate signed by the CA. The SAN list is what clients
        # check the host name against: 127.0.0.1/localhost for one machine, 'superlink'
        # for a compose network, EXTRA_SANS for a real host.
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out server.key
        openssl req -new -key server.key -subj "/O=Flower/CN=superlink" -out server.csr
        cat > server.ext <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = $SANS
EXT
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out server.pem -days "$DAYS" -sha256 -extfile server.ext 2>/dev/null
        rm -f server.csr server.ext ca.srl
    fi
    # One EC key pair per SuperNode (P-384, OpenSSH format, no passphrase).
    for ((i = 1; i <= NUM; i++)); do
        if [[ ! -f "supernode_$i" ]]; then
            rm -f "supernode_$i.pub"
            ssh-keygen -q -t ecdsa -b 384 -N "" -C "flexmoe-supernode-$i" -f "supernode_$i"
        elif [[ ! -f "supernode_$i.pub" ]]; then   # keep the identity: derive the public half
            ssh-keygen -y -f "supernode_$i" > "supernode_$i.pub"
        fi
    done
else
    "$PYTHON" - "$OUT_DIR" "$NUM" "$DAYS" "$SANS" "$FORCE" <<'PY' ||
import datetime, ipaddress, sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

out, num, days, sans, force = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
pem, pkcs8, none = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()


def write(name: str, data: bytes) -> None:
    (out / name).write_bytes(data)


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Flower"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def alt_names(spec: str) -> list[x509.GeneralName]:
    names = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, value = item.partition(":")
        if kind == "IP":
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        elif kind == "DNS":
            names.append(x509.DNSName(value))
        else:
            sys.exit(f"make_certs.sh: SAN entries must be IP:... or DNS:..., got {item!r}")
    return names


now = datetime.datetime.now(datetime.timezone.utc)
start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
if force or not all((out / f).exists() for f in ("ca.crt", "server.pem", "server.key")):
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(name("FLEX-MoE deployment CA"))
          .issuer_name(name("FLEX-MoE deployment CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       key_cert_sign=True, crl_sign=True, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    server = (x509.CertificateBuilder().subject_name(name("superlink")).issuer_name(ca.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(start).not_valid_after(end)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                           key_encipherment=True, data_encipherment=False, key_agreement=False,
                                           key_cert_sign=False, crl_sign=False, encipher_only=False,
                                           decipher_only=False), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                             critical=False)
              .add_extension(x509.SubjectAlternativeName(alt_names(sans)), critical=False)
              .sign(ca_key, hashes.SHA256()))
    write("ca.key", ca_key.private_bytes(pem, pkcs8, none))
    write("ca.crt", ca.public_bytes(pem))
    write("server.key", key.private_bytes(pem, pkcs8, none))
    write("server.pem", server.public_bytes(pem))

ssh_pub = serialization.PublicFormat.OpenSSH
for i in range(1, num + 1):
    private, public = out / f"supernode_{i}", out / f"supernode_{i}.pub"
    if private.exists():  # keep the identity; derive the public half if it went missing
        if public.exists():
            continue
        node_key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    else:
        node_key = ec.generate_private_key(ec.SECP384R1())
        private.write_bytes(node_key.private_bytes(pem, serialization.PrivateFormat.OpenSSH, none))
    public.write_bytes(node_key.public_key().public_bytes(serialization.Encoding.OpenSSH, ssh_pub)
                       + f" flexmoe-supernode-{i}\n".encode())
PY
        die "certificate generation with $PYTHON (cryptography) failed"
fi

# Private keys readable by the owner only; certificates and public keys by anyone.
# Containers that run as another user need the private keys made readable to that
# user: do that on a copy, not here.
cd "$OUT_DIR"
chmod 600 ca.key server.key
chmod 644 ca.crt server.pem
for ((i = 1; i <= NUM; i++)); do chmod 600 "supernode_$i"; chmod 644 "supernode_$i.pub"; done
echo "make_certs.sh ($CERT_TOOL): $OUT_DIR holds ca.crt, server.pem, server.key and $NUM SuperNode key pairs"
