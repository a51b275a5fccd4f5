"""Helpers for the serving tests: a signed bundle of the fake run, and `secure-ft serve` as a child process.

Every server is started in its own session and stopped by its process group id, also when
the test that started it fails (use :func:`serve_processes` in a fixture's try/finally).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from fake_run import make_run
from secure_ft.release.export import export_bundle
from secure_ft.release.keys import default_key_paths

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


@dataclass
class SignedBundle:
    bundle: Path
    private_key: Path
    public_key: Path
    run_dir: Path


def signed_bundle(root: Path, **run_options) -> SignedBundle:
    """The fake run (tiny model, verdict signed by the gate's key) exported and signed with the same key.

    `run_options` go to `fake_run.make_run` (e.g. ``model_dir``, ``front_end``).
    """
    run = make_run(root, **run_options)
    private, public = default_key_paths()
    return SignedBundle(export_bundle(run.run_dir, root / "bundle"), private, public, run.run_dir)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOOPBACK, port)) == 0


class ServerProcess:
    """One ``secure-ft serve`` child process on a loopback port; its output goes to a log file."""

    def __init__(self, bundle: Path, args: list[str], log_path: Path, port: int | None = None, device: str = "cpu",
                 tls_ca: Path | None = None):
        self.port = port or free_port()
        # with TLS (`tls_ca`: the CA that signed the --ssl-certfile) the server is reached, and polled, over HTTPS
        self.url = f"{'https' if tls_ca else 'http'}://{LOOPBACK}:{self.port}"
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(tls_ca)) if tls_ca else True
        self.log_path = log_path
        self._log = open(log_path, "wb")
        env = {**os.environ, "PYTHONPATH": str(REPO)}  # the child imports this tree
        command = [sys.executable, "-m", "secure_ft.cli", "serve", str(bundle), "--host", LOOPBACK,
                   "--port", str(self.port), "--device", device, *args]
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=log_path.parent)

    @property
    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1.0, verify=self.verify).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.output}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers."""
        if self.process.poll() is None:
            _kill_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _kill_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session: the group id is the child's pid
    except ProcessLookupError:
        pass


@dataclass
class TlsFiles:
    ca: Path  # the throw-away CA's certificate: what a client trusts
    certificate: Path  # the server's certificate, for 127.0.0.1 and localhost, signed by the CA
    key: Path  # its private key (mode 0600)


def make_tls_files(folder: Path) -> TlsFiles:
    """A throw-away CA and a loopback server certificate it signed (ECDSA P-256, valid for a day)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def certificate(subject: str, key, issuer: str, issuer_key, *extensions):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("secure-ft test CA", ca_key, "secure-ft test CA", ca_key,
                     (x509.BasicConstraints(ca=True, path_length=0), True),
                     (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                                    encipher_only=False, decipher_only=False), True))
    server = certificate("localhost", server_key, "secure-ft test CA", ca_key,
                         (x509.BasicConstraints(ca=False, path_length=None), True),
                         (x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                       x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), False),
                         (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False))
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.certificate.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.key.touch(mode=0o600)
    files.key.write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    return files


@contextmanager
def serve_processes(log_dir: Path):
    """Yields ``start(bundle, *args) -> ServerProcess``; stops every started server on exit, pass or fail."""
    started: list[ServerProcess] = []

    def start(bundle: Path, *args: str, tls_ca: Path | None = None) -> ServerProcess:
        server = ServerProcess(bundle, list(args), log_dir / f"serve-{len(started)}.log", tls_ca=tls_ca)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
