"""A fake identity provider for tokend's tests: key pairs made with openssl at test time,
JWTs signed by openssl (not by tokend: the signatures come from elsewhere), and a JWKS
served over HTTPS with the test CA, with switchable faults.

    keys = KeySet(folder)                   # RSA, EC P-256, EC P-384, Ed25519
    token = keys.sign("rsa", "RS256", {"sub": "u1", ...}, kid="rsa-1")
    idp = Idp(keys, tls=(ca, cert, key))    # https://127.0.0.1:<port>/jwks.json
    idp.fault = "hang" | "500" | "garbage" | None; idp.fetches counts the fetches
"""
import base64
import http.server
import json
import os
import socketserver
import ssl
import subprocess
import threading
import time


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def openssl(*args, data=None, cwd=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True, cwd=cwd).stdout


def der_int(data, i):
    """Reads a DER INTEGER at i; returns (value bytes without sign padding, next index)."""
    assert data[i] == 0x02
    n = data[i + 1]
    value = data[i + 2:i + 2 + n]
    return value.lstrip(b"\x00"), i + 2 + n


# The order n of the P-256 and P-384 groups, by the size of r and s.
EC_ORDER = {32: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
            48: int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
                    "581A0DB248B0A77AECEC196ACCC52973", 16)}


def ecdsa_flip_s(raw):
    """r||s -> r||(n - s): the other valid signature of the same input (low-S <-> high-S)."""
    size = len(raw) // 2
    s = int.from_bytes(raw[size:], "big")
    return raw[:size] + (EC_ORDER[size] - s).to_bytes(size, "big")


def ecdsa_raw(der, size):
    """DER ECDSA-Sig-Value -> r||s of size bytes each, as JWS wants it, with s in its low
    form (s <= n / 2), which tokend requires."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 3
    r, i = der_int(der, i)
    s, _ = der_int(der, i)
    raw = r.rjust(size, b"\x00") + s.rjust(size, b"\x00")
    return ecdsa_flip_s(raw) if int.from_bytes(s, "big") > EC_ORDER[size] // 2 else raw


class KeySet:
    """Key pairs of each kind tokend verifies, in folder."""

    KINDS = {"rsa": ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
             "ec256": ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
             "ec384": ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
             "ed": ["genpkey", "-algorithm", "ed25519"]}

    def __init__(self, folder, kinds=("rsa", "ec256", "ec384", "ed")):
        self.folder = folder
        self.kinds = kinds
        for kind in kinds:
            openssl(*self.KINDS[kind], "-out", self.path(kind, "key.pem"))
            openssl("pkey", "-in", self.path(kind, "key.pem"), "-pubout", "-out", self.path(kind, "pub.pem"))

    def path(self, kind, what):
        return os.path.join(self.folder, f"{kind}-{what}")

    def pem(self, kind, private=False):
        with open(self.path(kind, "key.pem" if private else "pub.pem")) as f:
            return f.read()

    def jwk(self, kind, kid):
        der = openssl("pkey", "-pubin", "-in", self.path(kind, "pub.pem"), "-outform", "DER")
        if kind == "rsa":
            text = openssl("pkey", "-pubin", "-in", self.path(kind, "pub.pem"), "-noout", "-text").decode()
            modulus = "".join(text.split("Modulus:")[1].split("Exponent:")[0].split()).replace(":", "")
            n = bytes.fromhex(modulus).lstrip(b"\x00")
            exponent = int(text.split("Exponent:")[1].split()[0])
            e = exponent.to_bytes((exponent.bit_length() + 7) // 8, "big")
            return {"kty": "RSA", "kid": kid, "use": "sig", "n": b64url(n), "e": b64url(e)}
        if kind.startswith("ec"):
            size = 32 if kind == "ec256" else 48
            point = der[-(1 + 2 * size):]      # the uncompressed point ends the SPKI
            assert point[0] == 4
            return {"kty": "EC", "kid": kid, "crv": "P-256" if size == 32 else "P-384",
                    "x": b64url(point[1:1 + size]), "y": b64url(point[1 + size:])}
        return {"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64url(der[-32:])}

    def sign(self, kind, alg, claims, kid=None, header=None):
        head = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {}), **(header or {})}
        signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}".encode()
        key = self.path(kind, "key.pem")
        if alg in ("RS256", "RS384", "RS512"):
            sig = openssl("dgst", f"-sha{alg[2:]}", "-sign", key, data=signing_input)
        elif alg == "PS256":
            sig = openssl("dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest",
                          "-sign", key, data=signing_input)
        elif alg in ("ES256", "ES384"):
            der = openssl("dgst", f"-sha{alg[2:]}", "-sign", key, data=signing_input)
            sig = ecdsa_raw(der, 32 if alg == "ES256" else 48)
        elif alg == "EdDSA":
            path = os.path.join(self.folder, f"input-{time.time_ns()}")
            with open(path, "wb") as f:
                f.write(signing_input)
            sig = openssl("pkeyutl", "-sign", "-inkey", key, "-rawin", "-in", path)
        else:
            raise ValueError(alg)
        return f"{signing_input.decode()}.{b64url(sig)}"


def hs256(secret, claims, alg="HS256", header=None):
    import hashlib
    import hmac
    head = {"alg": alg, "typ": "JWT", **(header or {})}
    signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    sig = hmac.new(secret if isinstance(secret, bytes) else secret.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(sig)}"


class Idp:
    """Serves {"keys": [...]} at /jwks.json over HTTPS; fault: None, "hang", "500", "garbage"."""

    def __init__(self, jwks, tls):
        self.jwks = jwks
        self.fault = None
        self.fetches = 0
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                idp.fetches += 1
                if idp.fault == "hang":
                    time.sleep(30)
                    return
                if idp.fault == "500":
                    body, status = b'{"error":"down"}', 500
                elif idp.fault == "garbage":
                    body, status = b"<html>not json", 200
                else:
                    body, status = json.dumps(idp.jwks).encode(), 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls[1], tls[2])
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
