#!/usr/bin/env python3
"""Create the certificate authority, the SuperLink's TLS certificate, and SuperNode keys.

Three commands, run by the coordinator (``ca``, ``server``) and by each site (``site-key``)::

    python deploy/make_certs.py ca --out pki/
    python deploy/make_certs.py server --out pki/ --dns superlink.example.org --ip 10.0.0.5
    python deploy/make_certs.py site-key --out site-keys/ --site hospital-a

``ca``        ``ca.crt`` (give it to every site) and ``ca.key`` (keep it offline)
``server``    ``server.pem`` / ``server.key`` for the SuperLink, signed by the CA, with the
              DNS names and IP addresses sites use to reach it (localhost/127.0.0.1 always
              included for local checks)
``site-key``  ``<site>`` (private, OpenSSH format, stays at the site) and ``<site>.pub``
              (send it to the coordinator, who registers it: only registered keys may join)

Private keys are written with mode 0600 and never overwritten (pass ``--force`` to replace).
Keys are elliptic-curve: P-256 for TLS, P-384 for SuperNode authentication (Flower accepts
NIST curves only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write(path: Path, data: bytes, private: bool, force: bool) -> None:
    if path.exists() and not force:
        raise SystemExit(f"error: {path} exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    handle = os.open(temp, flags, 0o600 if private else 0o644)
    try:
        os.write(handle, data)
    finally:
        os.close(handle)
    os.replace(temp, path)
    print(f"wrote {path}")


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "secure-ft federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(out: Path, days: int, force: bool) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(_name("secure-ft federation CA")).issuer_name(_name("secure-ft federation CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write(out / "ca.key", _pem_key(key), private=True, force=force)
    _write(out / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), private=False, force=force)


def make_server(out: Path, dns: list[str], ips: list[str], days: int, force: bool) -> None:
    try:
        ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error.filename} not found; run `make_certs.py ca --out {out}` first") from None
    names = list(dict.fromkeys(["localhost", *dns]))
    addresses = list(dict.fromkeys(["127.0.0.1", *ips]))
    try:
        alt_names = [x509.DNSName(name) for name in names] + [x509.IPAddress(ipaddress.ip_address(ip))
                                                               for ip in addresses]
    except ValueError as error:
        raise SystemExit(f"error: bad --ip value: {error}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(names[-1] if dns else "localhost")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(out / "server.key", _pem_key(key), private=True, force=force)
    _write(out / "server.pem", cert.public_bytes(serialization.Encoding.PEM), private=False, force=force)
    print(f"server certificate valid for: {', '.join(names + addresses)}")


def make_site_key(out: Path, site: str, force: bool) -> None:
    if not site or any(char in site for char in "/\\ \t\n"):
        raise SystemExit(f"error: --site {site!r} must be a plain name (letters, digits, - and _)")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(out / site, private, private=True, force=force)
    _write(out / f"{site}.pub", public + f" {site}\n".encode(), private=False, force=force)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ca = commands.add_parser("ca", help="create the federation's certificate authority")
    server = commands.add_parser("server", help="create the SuperLink's TLS certificate, signed by the CA")
    server.add_argument("--dns", action="append", default=[], help="DNS name sites use for the SuperLink (repeat)")
    server.add_argument("--ip", action="append", default=[], help="IP address sites use for the SuperLink (repeat)")
    site = commands.add_parser("site-key", help="create a SuperNode authentication key pair for one site")
    site.add_argument("--site", required=True, help="the site's name (file names)")
    for command in (ca, server, site):
        command.add_argument("--out", required=True, type=Path, help="folder to write into")
        command.add_argument("--force", action="store_true", help="replace existing files")
    for command in (ca, server):
        command.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    args = parser.parse_args(argv)
    if args.command == "ca":
        make_ca(args.out, args.days, args.force)
    elif args.command == "server":
        make_server(args.out, args.dns, args.ip, args.days, args.force)
    else:
        make_site_key(args.out, args.site, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
