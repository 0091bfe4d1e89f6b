"""Test certificates, made with the ``openssl`` command line tool into a directory.

    pki = make_pki(tmp_path)
    pki.ca, pki.server_cert, pki.server_key, pki.client_cert, ...

Everything is short-lived (2 days) and uses P-256 keys, so a whole set takes well
under a second to make.
"""
import dataclasses
import os
import shutil
import subprocess

CLIENT_KEY_PASSWORD = "client-key-pass-7731"


def have_openssl():
    return shutil.which("openssl") is not None


def _openssl(*args, cwd):
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args), proc.stderr))


def _key(cwd, name, password=None):
    path = os.path.join(cwd, name + ".key")
    args = ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", path]
    if password is not None:
        args[-2:-2] = ["-aes256", "-pass", "pass:" + password]
    _openssl(*args, cwd=cwd)
    return path


def _ca(cwd, name, cn):
    key = _key(cwd, name)
    cert = os.path.join(cwd, name + ".pem")
    _openssl("req", "-x509", "-new", "-key", key, "-out", cert, "-days", "2",
             "-subj", "/CN=" + cn,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=cwd)
    return cert, key


def _leaf(cwd, name, cn, ca, *, san=None, client=False, password=None):
    ca_cert, ca_key = ca
    key = _key(cwd, name, password)
    csr = os.path.join(cwd, name + ".csr")
    cert = os.path.join(cwd, name + ".pem")
    req = ["req", "-new", "-key", key, "-out", csr, "-subj", "/CN=" + cn]
    if password is not None:
        req += ["-passin", "pass:" + password]
    _openssl(*req, cwd=cwd)
    ext = os.path.join(cwd, name + ".ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\n")
        f.write("extendedKeyUsage=%s\n" % ("clientAuth" if client else "serverAuth"))
        if san:
            f.write("subjectAltName=%s\n" % ",".join(san))
    _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
             "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext, cwd=cwd)
    return cert, key


@dataclasses.dataclass
class PKI:
    dir: str
    ca: str                      # the trusted CA certificate (PEM)
    server: tuple                # (cert, key) for localhost and 127.0.0.1
    localhost_only: tuple        # (cert, key), SAN DNS:localhost only
    loopback_only: tuple         # (cert, key), SAN DNS:127.0.0.1 / IP only
    wrong_name: tuple            # (cert, key) for wrong.example.invalid
    untrusted: tuple             # (cert, key) for localhost, signed by another CA
    client: tuple                # (cert, key) CN=fastamqp-client, key encrypted
    client_key_password: str = CLIENT_KEY_PASSWORD


def make_pki(directory):
    d = str(directory)
    os.makedirs(d, exist_ok=True)
    ca = _ca(d, "ca", "fastamqp test CA")
    rogue = _ca(d, "rogue-ca", "fastamqp rogue CA")
    return PKI(
        dir=d,
        ca=ca[0],
        server=_leaf(d, "server", "localhost", ca,
                     san=["DNS:localhost", "DNS:127.0.0.1", "IP:127.0.0.1"]),
        localhost_only=_leaf(d, "localhost-only", "localhost", ca,
                             san=["DNS:localhost"]),
        loopback_only=_leaf(d, "loopback-only", "127.0.0.1", ca,
                            san=["DNS:127.0.0.1", "IP:127.0.0.1"]),
        wrong_name=_leaf(d, "wrong-name", "wrong.example.invalid", ca,
                         san=["DNS:wrong.example.invalid"]),
        untrusted=_leaf(d, "untrusted", "localhost", rogue,
                        san=["DNS:localhost", "DNS:127.0.0.1", "IP:127.0.0.1"]),
        client=_leaf(d, "client", "fastamqp-client", ca, client=True,
                     password=CLIENT_KEY_PASSWORD),
    )
