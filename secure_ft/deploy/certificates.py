"""The federation's certificate authority, the SuperLink's TLS certificate, and SuperNode keys.

Three commands, run by the coordinator (``ca``, ``server``) and by each site (``site-key``)::

    secure-ft deploy certs ca --out pki/
    secure-ft deploy certs server --out pki/ --dns superlink.example.org --ip 10.0.0.5
    secure-ft deploy certs site-key --out site-keys/ --site hospital-a

``ca``        ``ca.crt`` (give it to every site) and ``ca.key`` (keep it offline): the key is
              written *outside* the ``--out`` folder, into ``--ca-key-dir`` (default
              ``ca-private/`` beside it), so that copying ``pki/`` to the SuperLink machine
              never copies the CA's key
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

import datetime as dt
import ipaddress
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_ft.errors import ConfigError
from secure_ft.records.atomic_files import atomic_write_bytes

SITE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _write(path: Path, data: bytes, private: bool, force: bool) -> None:
    if path.exists() and not force:
        raise ConfigError(f"{path}: exists; pass --force to replace it")
    atomic_write_bytes(path, data, mode=0o600 if private else 0o644)
    print(f"wrote {path}")


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "secure-ft federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def ca_key_dir(out: Path, key_dir: Path | None) -> Path:
    """Where the CA's private key lives: `key_dir`, else ``ca-private/`` beside `out` (never inside it)."""
    folder = Path(key_dir) if key_dir is not None else Path(out).resolve().parent / "ca-private"
    if folder.resolve() == Path(out).resolve():
        raise ConfigError(f"--ca-key-dir {folder}: must not be the --out folder; the CA key stays out of pki/")
    return folder


def make_ca(out: Path, days: int, force: bool, key_dir: Path | None = None) -> None:
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
    keys = ca_key_dir(out, key_dir)
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(keys / "ca.key", _pem_key(key), private=True, force=force)
    _write(out / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), private=False, force=force)
    print(f"warning: {keys / 'ca.key'} signs every certificate of the federation: keep it offline (not on the "
          f"SuperLink machine); `deploy certs server` needs it once, with --ca-key-dir {keys}")


def make_server(out: Path, dns: list[str], ips: list[str], days: int, force: bool,
                key_dir: Path | None = None) -> None:
    key_file = ca_key_dir(out, key_dir) / "ca.key"
    if not key_file.is_file() and (out / "ca.key").is_file():  # made by an older version, inside pki/
        key_file = out / "ca.key"
        print(f"warning: {key_file} is inside {out}: move it out (e.g. to {ca_key_dir(out, key_dir)}) and keep it "
              "offline; anyone who can read it can mint certificates for the federation")
    try:
        ca_key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    except FileNotFoundError as error:
        raise ConfigError(f"{error.filename}: not found; run `secure-ft deploy certs ca --out {out}` first "
                          "(give the same --ca-key-dir to both commands)") from None
    names = list(dict.fromkeys(["localhost", *dns]))
    addresses = list(dict.fromkeys(["127.0.0.1", *ips]))
    try:
        alt_names = [x509.DNSName(name) for name in names] + [x509.IPAddress(ipaddress.ip_address(ip))
                                                               for ip in addresses]
    except ValueError as error:
        raise ConfigError(f"bad --ip value: {error}") from None
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
    check_site_name(site)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(out / site, private, private=True, force=force)
    _write(out / f"{site}.pub", public + f" {site}\n".encode(), private=False, force=force)



def check_site_name(site: str) -> str:
    """A site's name is a file name and a Flower node config value: plain characters only."""
    if not SITE_NAME.match(site or ""):
        raise ConfigError(f"--site {site!r} must be a plain name (letters, digits, '.', '_', '-')")
    return site
