"""TLS and the call token from Python (certificates made with the
`cryptography` package)."""

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from taskit_native import BackendProcessingError, FrontEnd, TlsError


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer, issuer_key, ca, sans=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path, data):
    path.write_bytes(data)
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def certs(tmp_path):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("taskit test CA", ca_key, "taskit test CA", ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = _cert("localhost", key, "taskit test CA", ca_key, False, sans)
    pem = serialization.Encoding.PEM
    return {
        "ca": _write(tmp_path / "ca.pem", ca.public_bytes(pem)),
        "cert": _write(tmp_path / "cert.pem", cert.public_bytes(pem)),
        "key": _write(tmp_path / "key.pem", key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
    }


def test_tls_and_the_call_token(new_host, certs, tmp_path):
    token = tmp_path / "call-token"
    _write(token, b"python-call-token")
    h = new_host(extra=[
        "--tls-bind", "127.0.0.1:0", "--tls-cert", certs["cert"], "--tls-key", certs["key"],
        "--call-token-file", str(token),
    ])
    assert h.tls_addr
    fe = FrontEnd([h.tls_addr], tls_ca=[certs["ca"]], call_token="python-call-token")
    assert fe.work("add", 20, 22) == 42
    assert fe.work("echo", "x" * 200_000) == "x" * 200_000
    # A certificate from a CA this client does not trust.
    with pytest.raises(TlsError, match="UnknownIssuer"):
        FrontEnd([h.tls_addr], tls=True, call_token="python-call-token").work("add", 1, 1)
    # The plain bind without the token.
    with pytest.raises(BackendProcessingError) as caught:
        FrontEnd([h.addr]).work("add", 1, 1)
    assert caught.value.type == "Unauthorized"
    assert FrontEnd([h.addr], call_token="python-call-token").work("add", 1, 1) == 2
