"""The policy toolkit, through scripts the tests write: tokend.http, crypto, jwt, cookies,
shared dictionaries, timers, now/env, and logging. Fakes on loopback: an application
backend and an identity provider serving a JWKS over HTTPS with a CA made at test time."""
import concurrent.futures
import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
import unittest

from blocks import Block, Get, run_blocks
from harness import CANARY_KEY, SRC, TokendTestCase, make_ca, request

sys.path.insert(0, os.path.join(SRC, "tests", "fakes"))
from backend import Backend  # noqa: E402
from idp import Idp, KeySet, hs256  # noqa: E402

HTTP_SCRIPT = r'''
local tokend = require "tokend"
local cjson = require "cjson"
local BACKEND = tokend.env("BACKEND")

local function result(res, err)
  if not res then return 200, { err = err } end
  return 200, { status = res.status, headers = res.headers, body = res.body }
end

tokend.route("GET", "/call/:what", function(req)
  local opts = cjson.decode(req.query.opts or "{}")
  return result(tokend.http.request(BACKEND .. "/" .. req.params.what .. (req.query.q or ""), opts))
end)
tokend.route("GET", "/url", function(req) return result(tokend.http.request(req.query.url, { timeout_ms = 2000 })) end)
tokend.route("GET", "/bad/:what", function(req)
  local bad = { scheme = { "ftp://x" }, method = { BACKEND, { method = "get me" } },
                header = { BACKEND, { headers = { ["X-A"] = "a\r\nb" } } }, timeout = { BACKEND, { timeout_ms = 0 } } }
  local ok, err = pcall(tokend.http.request, table.unpack(bad[req.params.what]))
  return 200, { ok = ok, err = tostring(err) }
end)
tokend.route("GET", "/in-coroutine", function()
  local ok, err = coroutine.wrap(function() return pcall(tokend.http.request, BACKEND .. "/echo") end)()
  return 200, { ok = ok, err = tostring(err) }
end)
tokend.route("GET", "/stats", function() return 200, tokend.stats() end)
'''


class HttpClient(TokendTestCase):
    def setUp(self):
        super().setUp()
        self.backend = Backend()
        self.addCleanup(self.backend.stop)
        self.t = self.tokend(script=self.write("http.lua", HTTP_SCRIPT), workers=1,
                             env={"BACKEND": self.backend.url, "http_proxy": "http://127.0.0.1:1",
                                  "ALL_PROXY": "http://127.0.0.1:1", "TOKEND_MAX_CONNECTIONS_PER_IP": "0"})

    def call(self, what, q="", **opts):
        from urllib.parse import quote
        return self.t.get(f"/call/{what}?q={quote(q)}&opts={quote(json.dumps(opts))}").json()

    def test_requests_and_answers(self):
        j = self.call("echo", method="POST", headers={"X-Token": "abc", "Content-Type": "text/plain"}, body="payload")
        self.assertEqual(j["status"], 200)
        echo = json.loads(j["body"])
        self.assertEqual((echo["method"], echo["body"]), ("POST", "payload"))
        self.assertEqual(echo["headers"]["x-token"], "abc")
        self.assertTrue(echo["headers"]["user-agent"].startswith("tokend/"))
        self.assertNotIn("authorization", echo["headers"], "the AssemblyAI key is never added")
        self.assertNotIn(CANARY_KEY, j["body"])
        self.assertEqual(j["headers"]["x-backend"], "fake", "header names in lower case")
        self.assertEqual(j["headers"]["set-cookie"], "a=1, b=2")
        j = self.call("redirect")
        self.assertEqual((j["status"], j["headers"]["location"]), (302, "/echo"), "redirects are not followed")
        self.assertEqual(json.loads(self.call("echo", method="DELETE")["body"])["method"], "DELETE")

    def test_failures_name_their_kind(self):
        for what, opts, kind in [("hang", {"timeout_ms": 300}, "timeout:"), ("reset", {}, "network:"),
                                 ("big", {"max_body_bytes": 1000}, "too large:"), ("echo", {"max_body_bytes": 10}, "too large:")]:
            with self.subTest(what):
                started = time.time()
                j = self.call(what, **opts)
                self.assertTrue(j.get("err", "").startswith(kind), j)
                self.assertLess(time.time() - started, 3)
        j = self.t.get("/url?url=http://127.0.0.1:1/").json()
        self.assertTrue(j["err"].startswith("connect:"), j)
        started = time.time()
        j = self.call("big", q="?mb=100")
        self.assertTrue(j["err"].startswith("too large:"), "100 MB against the 1 MiB default")
        self.assertLess(time.time() - started, 5)

    def test_tls_is_verified(self):
        ca, cert, key = make_ca(self.workdir)
        idp = Idp({"keys": []}, (ca, cert, key))
        self.addCleanup(idp.stop)
        j = self.t.get(f"/url?url={idp.url}").json()
        self.assertTrue(j["err"].startswith("tls:"), f"a CA tokend does not trust: {j}")
        t2 = self.tokend(script=self.write("http2.lua", HTTP_SCRIPT), env={"BACKEND": self.backend.url,
                                                                          "CURL_CA_BUNDLE": ca})
        self.assertEqual(t2.get(f"/url?url={idp.url}").json()["status"], 200, "CURL_CA_BUNDLE is honoured")

    def test_bad_arguments_raise(self):
        for what, needle in [("scheme", "http:// and https://"), ("method", "upper-case"),
                             ("header", "bad name or value"), ("timeout", "timeout_ms")]:
            with self.subTest(what):
                j = self.t.get(f"/bad/{what}").json()
                self.assertFalse(j["ok"])
                self.assertIn(needle, j["err"])
        j = self.t.get("/in-coroutine").json()
        self.assertFalse(j["ok"])
        self.assertIn("must be called from a request handler or a timer", j["err"])

    def test_at_load_time_it_raises(self):
        script = self.write("load.lua", 'local tokend = require "tokend"\ntokend.http.request("http://127.0.0.1:1/")\n')
        p = self.run_tokend(["--check", "--script", script])
        self.assertEqual(p.returncode, 1)
        self.assertIn("must be called from a request handler", p.stderr)

    def test_connections_are_kept_alive(self):
        for _ in range(3):
            self.call("echo")
        before = self.backend.connections
        for _ in range(20):
            self.assertEqual(self.call("echo")["status"], 200)
        self.assertEqual(self.backend.connections, before, "no new connection after warm-up")

    def test_no_request_waits_behind_another(self):
        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            results = list(pool.map(lambda _: self.call("slow", q="?ms=500"), range(100)))
        elapsed = time.time() - started
        self.assertTrue(all(r["status"] == 200 for r in results), results[:3])
        self.assertGreaterEqual(self.backend.slow_max_in_flight, 90,
                                "100 handlers on one worker, their calls waiting on the backend at the same time")
        self.assertLess(elapsed, 25, "not one after another (50 s)")


# tokend.crypto and tokend.cookie: known answers, as blocks (blocks.py).
CRYPTO_BLOCKS = [
    Block("digests and MACs", """
        local c = tokend.crypto
        tokend.route("GET", "/sha256", function() return 200, c.hex(c.sha256("abc")) end)
        tokend.route("GET", "/hmac", function()
          return 200, c.hex(c.hmac_sha256("key", "The quick brown fox jumps over the lazy dog"))
        end)
        """, [Get("/sha256", body=hashlib.sha256(b"abc").hexdigest()),
              Get("/hmac", body="f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8")], fake=False),
    Block("base64 and base64url both ways; a bad input is nil and why", """
        local c = tokend.crypto
        tokend.route("GET", "/b64", function()
          local bad, err = c.base64_decode("@@@")
          local badurl, errurl = c.base64url_decode("a+b/")
          return 200, {
            b64 = c.base64_encode("\\255\\254\\253 hi"), b64back = c.hex(c.base64_decode("//79IGhp")),
            b64url = c.base64url_encode("\\255\\254\\253 hi"), b64urlback = c.hex(c.base64url_decode("__79IGhp")),
            padded = c.base64_encode("ab"), unpadded = c.base64url_encode("ab"), back = c.base64_decode("YWI"),
            bad = tostring(bad), err = err, badurl = tostring(badurl), errurl = errurl }
        end)
        """, [Get("/b64", json={"b64": "//79IGhp", "b64back": "fffefd206869", "b64url": "__79IGhp",
                                "b64urlback": "fffefd206869", "padded": "YWI=", "unpadded": "YWI", "back": "ab",
                                "bad": "nil", "err": "not base64", "badurl": "nil", "errurl": "not base64url"})],
        fake=False),
    Block("random bytes and constant-time comparison", """
        local c = tokend.crypto
        tokend.route("GET", "/random", function()
          return 200, { random = #c.random_bytes(32), differ = c.random_bytes(16) ~= c.random_bytes(16),
                        same = c.equal("abc", "abc"), differs = c.equal("abc", "abd"), shorter = c.equal("abc", "ab") }
        end)
        """, [Get("/random", json={"random": 32, "differ": True, "same": True, "differs": False, "shorter": False})],
        fake=False),
    Block("cookies: req.cookies takes the first of a name; tokend.cookie writes Set-Cookie values", """
        tokend.route("GET", "/cookies", function(req)
          return 200, { cookies = req.cookies }, {
            ["Set-Cookie"] = { tokend.cookie("sid", "abc.123", { max_age = 3600, secure = true }),
                               tokend.cookie("theme", "dark", { http_only = false, same_site = "Strict", path = "/app" }) } }
        end)
        tokend.route("GET", "/bad-cookie", function()
          local ok, err = pcall(tokend.cookie, "sid", "a value; Domain=evil")
          local ok2, err2 = pcall(tokend.cookie, "sid", "x", { same_site = "None" })
          return 200, { ok = ok, err = tostring(err), ok2 = ok2, err2 = tostring(err2) }
        end)
        """, [Get("/cookies", headers={"Cookie": 'a=1; b="two"; a=3; =x; flag'}, json={"cookies": {"a": "1", "b": "two"}},
                  header_all={"set-cookie": ["sid=abc.123; Max-Age=3600; Path=/; Secure; HttpOnly; SameSite=Lax",
                                             "theme=dark; Path=/app; SameSite=Strict"]}),
              Get("/bad-cookie", fields={"ok": False, "ok2": False}, has=["encode it first", "secure"])], fake=False),
]


class Crypto(TokendTestCase):
    def test_blocks(self):
        run_blocks(self, CRYPTO_BLOCKS)


JWT_SCRIPT = r'''
local tokend = require "tokend"
local cjson = require "cjson"
local function read(path) local f = assert(io.open(path)) local s = f:read("a") f:close() return s end
local OPTS = {
  jwks = { jwks_url = tokend.env("JWKS_URL"), issuer = "https://idp.test", audience = { "tokend", "other" } },
  secret = { secret = "s3cret", issuer = "https://idp.test" },
  pem = { keys = read(tokend.env("RSA_PUB")), issuer = "https://idp.test", audience = "tokend" },
  set = { keys = read(tokend.env("JWKS_FILE")), issuer = "https://idp.test", audience = "tokend" },
  rs_only = { jwks_url = tokend.env("JWKS_URL"), algorithms = { "RS256" }, issuer = false, audience = false },
  strict = { jwks_url = tokend.env("JWKS_URL"), leeway_seconds = 0, issuer = "https://idp.test", audience = "tokend" },
  short = { jwks_url = tokend.env("JWKS_URL"), jwks_ttl = 1, issuer = "https://idp.test", audience = "tokend" },
}
tokend.route("POST", "/verify/:how", function(req)
  local claims, err, kind = tokend.jwt.verify(req.body, OPTS[req.params.how])
  return 200, { claims = claims, err = err, kind = kind }
end)
tokend.route("GET", "/rule/:case", function(req)
  local keys, url = read(tokend.env("RSA_PUB")), tokend.env("JWKS_URL")
  local opts = ({
    keys_no_issuer = { keys = keys, audience = "tokend" },
    keys_no_audience = { keys = keys, issuer = "https://idp.test" },
    jwks_no_issuer = { jwks_url = url, audience = "tokend" },
    unset_setting = { jwks_url = url, issuer = tokend.env("JWT_ISSUER_NOT_SET"), audience = "tokend" },
    issuer_a_number = { keys = keys, issuer = 5, audience = "tokend" },
    audience_true = { keys = keys, issuer = "https://idp.test", audience = true },
    both_false = { keys = keys, issuer = false, audience = false },
    secret_alone = { secret = "s3cret" },
  })[req.params.case]
  local ok, claims, err, kind = pcall(tokend.jwt.verify, req.body, opts)
  return 200, { ok = ok, claims = ok and claims or nil, err = ok and err or tostring(claims), kind = kind }
end)
tokend.route("GET", "/sign-ec", function()
  local count, good = 0, 0
  for _, c in ipairs { { "EC256", "ES256" }, { "EC384", "ES384" } } do
    local private, public = read(tokend.env(c[1] .. "_KEY")), read(tokend.env(c[1] .. "_PUB"))
    for i = 1, 16 do
      local claims = { sub = "me", n = i, exp = tokend.now() + 60 }
      local token = tokend.jwt.sign(claims, { private_key = private, alg = c[2] })
      count = count + 1
      if tokend.jwt.verify(token, { keys = public, issuer = false, audience = false }) then good = good + 1 end
    end
  end
  return 200, { count = count, good = good }
end)
tokend.route("GET", "/sign", function()
  local token = tokend.jwt.sign({ sub = "me", exp = tokend.now() + 60 }, { secret = "s3cret" })
  return 200, { token = token, back = tokend.jwt.verify(token, { secret = "s3cret" }) }
end)
'''


def none_token(claims):
    import base64
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


class Jwt(TokendTestCase):
    @classmethod
    def setUpClass(cls):
        import tempfile
        cls.folder = tempfile.mkdtemp(prefix="jwt-", dir=os.environ.get("TOKEND_TEST_TMP"))
        cls.keys = KeySet(cls.folder)
        cls.ca = make_ca(cls.folder)
        cls.jwks = {"keys": [cls.keys.jwk("rsa", "rsa-1"), cls.keys.jwk("ec256", "ec-1"),
                             cls.keys.jwk("ec384", "ec-2"), cls.keys.jwk("ed", "ed-1")]}

    def setUp(self):
        super().setUp()
        self.idp = Idp(self.jwks, self.ca)
        self.addCleanup(self.idp.stop)
        jwks_file = self.write("jwks.json", json.dumps(self.jwks))
        self.t = self.tokend(key=None, script=self.write("jwt.lua", JWT_SCRIPT), workers=2, env={
            "JWKS_URL": self.idp.url, "CURL_CA_BUNDLE": self.ca[0], "RSA_PUB": self.keys.path("rsa", "pub.pem"),
            "JWKS_FILE": jwks_file, "TOKEND_MAX_BODY_BYTES": "200000", "TOKEND_MAX_CONNECTIONS_PER_IP": "0",
            "EC256_KEY": self.keys.path("ec256", "key.pem"), "EC256_PUB": self.keys.path("ec256", "pub.pem"),
            "EC384_KEY": self.keys.path("ec384", "key.pem"), "EC384_PUB": self.keys.path("ec384", "pub.pem")})

    def claims(self, **extra):
        return {"iss": "https://idp.test", "aud": "tokend", "sub": "user-1", "exp": int(time.time()) + 300, **extra}

    def verify(self, how, token):
        return self.t.get(f"/verify/{how}", method="POST", body=token).json()

    def test_each_algorithm(self):
        for kind, alg, kid in [("rsa", "RS256", "rsa-1"), ("rsa", "RS384", "rsa-1"), ("rsa", "RS512", "rsa-1"),
                               ("rsa", "PS256", "rsa-1"), ("ec256", "ES256", "ec-1"), ("ec384", "ES384", "ec-2"),
                               ("ed", "EdDSA", "ed-1")]:
            with self.subTest(alg):
                j = self.verify("jwks", self.keys.sign(kind, alg, self.claims(), kid=kid))
                self.assertEqual(j.get("claims", {}).get("sub"), "user-1", j)
        self.assertEqual(self.verify("secret", hs256("s3cret", self.claims()))["claims"]["sub"], "user-1")
        for alg in ["HS384", "HS512"]:
            self.assertEqual(self.verify("secret", hs256("s3cret", self.claims(), alg))["claims"]["sub"], "user-1")
        self.assertEqual(self.verify("pem", self.keys.sign("rsa", "RS256", self.claims()))["claims"]["sub"], "user-1")
        self.assertEqual(self.verify("set", self.keys.sign("ed", "EdDSA", self.claims(), kid="ed-1"))["claims"]["sub"], "user-1")
        j = self.t.get("/sign").json()
        self.assertEqual(j["back"]["sub"], "me")

    def test_bad_tokens_get_nil_why_and_the_kind_of_failure(self):
        k = self.keys
        now = int(time.time())
        cases = [
            ("alg none", "jwks", none_token(self.claims()), "algorithm none", "bad_algorithm"),
            ("alg none with a secret", "secret", none_token(self.claims()), "not allowed", "bad_algorithm"),
            ("confusion: HS256 with the RSA public key as secret", "pem",
             hs256(k.pem("rsa").encode(), self.claims()), "HS256 is not allowed", "bad_algorithm"),
            ("an algorithm tokend does not know", "jwks", hs256("x", self.claims(), header={"alg": "RS999"}),
             "RS999", "bad_algorithm"),
            ("expired", "jwks", k.sign("rsa", "RS256", self.claims(exp=now - 100), kid="rsa-1"), "expired", "expired"),
            ("within the leeway", "jwks", k.sign("rsa", "RS256", self.claims(exp=now - 10), kid="rsa-1"), None, None),
            ("not yet valid", "jwks", k.sign("rsa", "RS256", self.claims(nbf=now + 300), kid="rsa-1"), "not valid yet",
             "not_yet_valid"),
            ("wrong issuer", "jwks", k.sign("rsa", "RS256", self.claims(iss="https://evil"), kid="rsa-1"), "issuer",
             "bad_issuer"),
            ("no issuer", "jwks", k.sign("rsa", "RS256", {**self.claims(), "iss": None}, kid="rsa-1"), "issuer",
             "bad_issuer"),
            ("wrong audience", "jwks", k.sign("rsa", "RS256", self.claims(aud=["nope"]), kid="rsa-1"), "audience",
             "bad_audience"),
            ("audience in a list", "jwks", k.sign("rsa", "RS256", self.claims(aud=["x", "other"]), kid="rsa-1"),
             None, None),
            ("no exp", "jwks", k.sign("rsa", "RS256", {"iss": "https://idp.test", "aud": "tokend"}, kid="rsa-1"),
             "no exp", "malformed"),
            ("a forged signature", "jwks", k.sign("rsa", "RS256", self.claims(), kid="rsa-1")[:-6] + "AAAAAA",
             "signature", "bad_signature"),
            ("signed by another key", "jwks", k.sign("ec256", "ES256", self.claims(), kid="rsa-1"), "no key fits",
             "bad_algorithm"),
            ("a kid no key has", "set", k.sign("rsa", "RS256", self.claims(), kid="rsa-2"), "kid rsa-2", "unknown_key"),
            ("an algorithm the script did not allow", "rs_only", k.sign("ed", "EdDSA", self.claims(), kid="ed-1"),
             "EdDSA is not allowed", "bad_algorithm"),
            ("bad base64", "jwks", "eyJ!!.eyJ.sig", "base64url", "malformed"),
            ("not three parts", "jwks", "abc.def", "three", "malformed"),
            ("a 100 KB token", "jwks", "a" * 100000, "larger than 8192", "malformed"),
            ("wrong secret", "secret", hs256("other", self.claims()), "signature", "bad_signature"),
            ("header not JSON", "jwks", "bm90anNvbg.eyJ9.c2ln", "header", "malformed"),
            ("exp as a string", "secret", hs256("s3cret", self.claims(exp=str(now + 300))), "NumericDate", "malformed"),
            ("nbf as a boolean", "secret", hs256("s3cret", self.claims(nbf=True)), "NumericDate", "malformed"),
            ("exp past a double", "secret", hs256("s3cret", self.claims(exp=10 ** 400)), "NumericDate", "malformed"),
            ("exp as a fraction", "secret", hs256("s3cret", self.claims(exp=now + 300.5)), None, None),
        ]
        for name, how, token, needle, kind in cases:
            with self.subTest(name):
                j = self.verify(how, token)
                if needle is None:
                    self.assertIn("claims", j, j)
                else:
                    self.assertNotIn("claims", j)
                    self.assertIn(needle, j["err"])
                    self.assertEqual(j["kind"], kind, j)

    def test_issuer_and_audience_are_required_with_keys_false_skips_them(self):
        token = self.keys.sign("rsa", "RS256", self.claims(iss="https://anyone", aud="anyone"))
        for case, needle in [("keys_no_issuer", "issuer is required with keys or jwks_url (false skips its check)"),
                             ("keys_no_audience", "audience is required"), ("jwks_no_issuer", "issuer is required"),
                             ("unset_setting", "issuer is required"), ("issuer_a_number", "issuer must be a string"),
                             ("audience_true", "audience must be a string, a list of strings or false")]:
            with self.subTest(case):
                j = self.t.get(f"/rule/{case}", body=token).json()
                self.assertEqual(j["ok"], False, j)
                self.assertIn("tokend.jwt.verify: " + needle, j["err"])
        j = self.t.get("/rule/both_false", body=token).json()
        self.assertEqual((j["ok"], j["claims"]["iss"]), (True, "https://anyone"), j)
        j = self.t.get("/rule/secret_alone", body=hs256("s3cret", self.claims(iss="https://anyone"))).json()
        self.assertEqual((j["ok"], j["claims"]["iss"]), (True, "https://anyone"), "with a secret both stay optional")
        self.assertEqual(self.idp.fetches, 0, "raised before anything was fetched")

    def test_a_provider_that_is_down_is_jwks_unavailable_and_an_unknown_kid_unknown_key(self):
        good = self.keys.sign("rsa", "RS256", self.claims(), kid="rsa-1")
        bad_issuer = self.keys.sign("rsa", "RS256", self.claims(iss="https://evil"), kid="rsa-1")
        stranger = self.keys.sign("rsa", "RS256", self.claims(), kid="rsa-9")
        self.idp.fault = "500"
        for token in [good, bad_issuer, stranger]:
            j = self.verify("short", token)
            self.assertEqual(j.get("kind"), "jwks_unavailable", j)
        self.assertIn("HTTP 500", j["err"])
        # Keys in hand, then the provider goes down: known kids pass, an unknown one may be
        # a key it rotated in, so it is the provider that failed, not the token.
        self.idp.fault = None
        t = self.tokend(key=None, script=self.write("jwt-down.lua", JWT_SCRIPT), workers=1, env={
            "JWKS_URL": self.idp.url, "CURL_CA_BUNDLE": self.ca[0], "RSA_PUB": self.keys.path("rsa", "pub.pem"),
            "JWKS_FILE": os.path.join(self.workdir, "jwks.json")})
        verify = lambda token: t.get("/verify/short", method="POST", body=token).json()
        self.assertIn("claims", verify(good))
        self.assertEqual(verify(stranger)["kind"], "unknown_key", "fetched lately: the kid is not the provider's")
        time.sleep(1.2)                                         # past jwks_ttl = 1
        self.idp.fault = "500"
        fetches = self.idp.fetches
        self.assertIn("claims", verify(good), "stale keys serve while they are fetched again")
        deadline, kinds = time.time() + 10, []
        while time.time() < deadline and "jwks_unavailable" not in kinds:
            kinds.append(verify(stranger)["kind"])
            time.sleep(0.05)
        self.assertGreater(self.idp.fetches, fetches)
        self.assertEqual(kinds[-1], "jwks_unavailable", kinds)
        self.assertEqual(set(kinds) - {"unknown_key", "jwks_unavailable"}, set())
        self.assertEqual(verify(bad_issuer)["kind"], "bad_issuer", "a known kid is checked with the keys in hand")

    def test_tokend_signs_es256_and_es384_in_low_s_form(self):
        # OpenSSL's own signatures have a high s half the time; verify takes only low ones.
        self.assertEqual(self.t.get("/sign-ec").json(), {"count": 32, "good": 32})

    def test_a_signature_is_verified_once_and_the_rest_on_every_call(self):
        # Each route below shares the JWKS URL, hence its key set and what it remembers; a
        # request may land on either worker, so each token is verified on both first.
        k = self.keys
        now = int(time.time())
        other_issuer = k.sign("rsa", "RS256", self.claims(iss="https://evil"), kid="rsa-1")
        eddsa = k.sign("ed", "EdDSA", self.claims(), kid="ed-1")
        expiring = k.sign("rsa", "RS256", self.claims(exp=now + 2), kid="rsa-1")
        for _ in range(4):
            self.assertIn("claims", self.verify("rs_only", other_issuer))
            self.assertIn("claims", self.verify("jwks", eddsa))
            self.assertIn("claims", self.verify("strict", expiring))
        self.assertIn("issuer", self.verify("jwks", other_issuer)["err"], "claims are checked on every call")
        self.assertEqual(self.verify("rs_only", eddsa)["kind"], "bad_algorithm", "so are the allowed algorithms")
        forged = expiring[:expiring.rindex(".") + 1] + k.sign("rsa", "RS256", self.claims(), kid="rsa-1").rsplit(".", 1)[1]
        self.assertIn("signature", self.verify("strict", forged)["err"], "another signature is checked")
        time.sleep(max(0, now + 2.5 - time.time()))
        self.assertIn("expired", self.verify("strict", expiring)["err"], "and so is the expiry")

    def test_unknown_kids_refetch_at_most_once_per_30_s(self):
        good = self.keys.sign("rsa", "RS256", self.claims(), kid="rsa-1")
        self.assertIn("claims", self.verify("jwks", good))
        fetches = self.idp.fetches
        # RS256 headers with kids the provider does not have (the signature is never looked at).
        tokens = [hs256("x", self.claims(), header={"alg": "RS256", "kid": f"unknown-{i}"}) for i in range(1000)]
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda token: self.verify("jwks", token), tokens))
        self.assertEqual({r.get("kind") for r in results}, {"unknown_key"}, results[0])
        self.assertLessEqual(self.idp.fetches - fetches, 1, "1,000 unknown kids, at most one fetch")
        self.assertIn("claims", self.verify("jwks", good), "known keys keep working")

    def test_a_broken_jwks_fails_fast_and_cached_keys_keep_working(self):
        good = self.keys.sign("ed", "EdDSA", self.claims(), kid="ed-1")
        self.idp.fault = "500"
        started = time.time()
        j = self.verify("jwks", good)
        self.assertIn("HTTP 500", j["err"])
        self.assertEqual(j["kind"], "jwks_unavailable")
        for fault in ["garbage", "hang"]:
            self.idp.fault = fault
            self.assertIn("err", self.verify("jwks", good))
        self.assertLess(time.time() - started, 8)
        started = time.time()
        for _ in range(10):
            self.assertIn("err", self.verify("jwks", good))
        self.assertLess(time.time() - started, 4, "after a failure, no request waits on the JWKS (a fetch waits 5 s)")
        # A fresh tokend with the keys cached: the provider failing does not matter.
        self.idp.fault = None
        t2 = self.tokend(key=None, script=self.write("jwt2.lua", JWT_SCRIPT), workers=1, env={
            "JWKS_URL": self.idp.url, "CURL_CA_BUNDLE": self.ca[0], "RSA_PUB": self.keys.path("rsa", "pub.pem"),
            "JWKS_FILE": os.path.join(self.workdir, "jwks.json")})
        self.assertIn("claims", t2.get("/verify/jwks", method="POST", body=good).json())
        self.idp.fault = "hang"
        started = time.time()
        for _ in range(5):
            self.assertIn("claims", t2.get("/verify/jwks", method="POST", body=good).json())
        self.assertLess(time.time() - started, 4, "none waits on the hanging provider (a fetch waits 5 s)")


STATE_SCRIPT = r'''
local tokend = require "tokend"
local counters = tokend.shared("counters")
local small = tokend.shared("small", { capacity = 2 })
tokend.route("GET", "/next", function()
  return 200, { n = counters:incr("n", 1, 0), worker = tokend.config.worker }
end)
tokend.route("GET", "/small", function()
  local a = { small:set("a", 1) }
  local b = { small:set("b", "two", 0.2) }
  local c = { small:set("c", true) }
  return 200, { a = a, b = b, c = c, geta = small:get("a"), getb = small:get("b"), getc = small:get("c"),
                add = { small:add("c", 5) }, incr = { small:incr("c", 1) }, ttl = small:ttl("b"),
                missing = { small:ttl("zz") } }
end)
tokend.route("GET", "/expired", function()
  small:set("t", "x", 0.05)
  return 200, { ttl = small:ttl("t") }
end)
tokend.route("GET", "/after", function() return 200, { t = small:get("t") } end)
tokend.route("GET", "/env", function()
  local ok, err = pcall(tokend.env, "ASSEMBLYAI_API_KEY")
  return 200, { app = tokend.env("APP_SETTING"), real = tokend.env("REAL_SETTING"), none = tokend.env("NOPE"),
                ok = ok, err = tostring(err), now = tokend.now() }
end)
'''


class State(TokendTestCase):
    def test_shared_counter_is_one_sequence_across_workers(self):
        t = self.tokend(key=None, script=self.write("s.lua", STATE_SCRIPT), workers=2)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda _: t.get("/next").json(), range(200)))
        self.assertEqual(sorted(g["n"] for g in got), list(range(1, 201)), "no number twice, none missing")
        self.assertEqual({g["worker"] for g in got}, {1, 2}, "both workers answered")
        t.proc.send_signal(signal.SIGHUP)
        t.wait_log("reloaded")
        self.assertEqual(t.get("/next").json()["n"], 201, "kept across a reload")

    def test_dictionary_operations(self):
        t = self.tokend(key=None, script=self.write("s.lua", STATE_SCRIPT))
        j = t.get("/small").json()
        self.assertEqual((j["a"], j["b"], j["c"]), ([True], [True], [True, "evicted"]), "capacity 2: a goes")
        self.assertEqual((j.get("geta"), j["getb"], j["getc"]), (None, "two", True))
        self.assertEqual(j["add"], [False, "exists"])
        self.assertEqual(j["incr"], [None, "not a number"])
        self.assertGreater(j["ttl"], 0)
        self.assertEqual(j["missing"], [None, "not found"])
        self.assertGreater(t.get("/expired").json()["ttl"], 0)
        time.sleep(0.1)
        self.assertIsNone(t.get("/after").json().get("t"), "expired")

    def test_env_reads_settings_but_never_the_key(self):
        self.write(".env", f"ASSEMBLYAI_API_KEY={CANARY_KEY}\nAPP_SETTING=from-dotenv\nUNREAD_TYPO=x\n")
        t = self.tokend(key=None, script=self.write("s.lua", STATE_SCRIPT.replace(
            "local counters", 'tokend.env("APP_SETTING")\nlocal counters')), env={"REAL_SETTING": "from-env"})
        j = t.get("/env").json()
        self.assertEqual((j["app"], j["real"], j.get("none")), ("from-dotenv", "from-env", None))
        self.assertFalse(j["ok"])
        self.assertIn("stays out of Lua", j["err"])
        self.assertAlmostEqual(j["now"], time.time(), delta=2)
        log = t.wait_log("UNREAD_TYPO")
        self.assertIn("sets UNREAD_TYPO, which tokend does not use", log)
        self.assertNotIn("sets APP_SETTING", log, "a name the script reads is not reported")


TIMER_SCRIPT = r'''
local tokend = require "tokend"
local d = tokend.shared("timers")
tokend.timer.every(0.1, function()
  local n = d:incr("every", 1, 0)
  if n == 1 then d:set("first", tokend.now()) end
  d:incr("worker" .. tokend.config.worker, 1, 0)
  if n == 2 then error("the second run fails") end
end)
tokend.timer.every(0.1, function() d:incr("all" .. tokend.config.worker, 1, 0) end, { all_workers = true })
tokend.timer.every(0.2, function() while true do end end)
tokend.timer.after(0.05, function()
  local res = tokend.http.request(tokend.env("BACKEND") .. "/echo")
  d:set("http", res and res.status or -1)
  local token, info = tokend.generate_temp_token(30)
  d:set("token", token and #token or -1)
end)
local cancelled = tokend.timer.every(0.05, function() d:incr("cancelled", 1, 0) end)
cancelled:cancel()
tokend.route("GET", "/timers", function()
  local names = { "every", "worker1", "worker2", "all1", "all2", "http", "token", "cancelled", "later", "marker" }
  local t = {}
  for _, k in ipairs(names) do t[k] = d:get(k) end
  t.since_first = tokend.now() - d:get("first")
  return 200, t
end)
tokend.route("GET", "/later", function()
  tokend.timer.after(0.05, function() d:set("later", tokend.config.worker) end)
  return 204
end)
tokend.route("GET", "/bad", function()
  local ok, err = pcall(tokend.timer.every, 0, function() end)
  return 200, { ok = ok, err = tostring(err) }
end)
'''


class Timers(TokendTestCase):
    def test_timers(self):
        backend = Backend()
        self.addCleanup(backend.stop)
        fake = self.fake()
        t = self.tokend(fake=fake, script=self.write("t.lua", TIMER_SCRIPT), workers=2,
                        env={"BACKEND": backend.url, "TOKEND_LUA_INSTRUCTIONS": "200000"})
        time.sleep(1.1)
        j = t.get("/timers").json()
        # Every 0.1 s from its first run on (its clock, not the test's: a loaded machine may
        # take a while between loading the script and answering).
        runs = 1 + int(j["since_first"] / 0.1)
        self.assertGreaterEqual(j["since_first"], 0.9, j)
        self.assertLessEqual(j["every"], runs + 1, j)
        self.assertGreaterEqual(j["every"], runs * 0.7, j)
        self.assertIsNone(j.get("worker2"), "a timer the script defines runs in one worker")
        self.assertGreaterEqual(j.get("all2", 0), 8, "all_workers: in each")
        self.assertGreaterEqual(j.get("all1", 0), 8)
        self.assertEqual(j["http"], 200, "a timer may call out")
        self.assertGreater(j["token"], 20, "a timer may mint")
        self.assertIsNone(j.get("cancelled"))
        log = t.log
        self.assertIn("timer failed: ", log)
        self.assertIn("the second run fails", log)
        self.assertIn("instruction limit exceeded", log)
        self.assertEqual(t.get("/later").status, 204)
        time.sleep(0.2)
        self.assertIn(t.get("/timers").json()["later"], (1, 2))
        self.assertIn("at least 0.001", t.get("/bad").json()["err"])
        # A reload stops the old state's timers: the new script's run, the old ones do not.
        self.write("t.lua", 'local tokend = require "tokend"\n'
                            'tokend.route("GET", "/x", function() return 200, "new" end)\n')
        t.proc.send_signal(signal.SIGHUP)
        t.wait_log("reloaded")
        time.sleep(0.3)
        d1 = self.count_every(t)
        time.sleep(0.5)
        self.assertEqual(self.count_every(t), d1, "the old timers stopped")

    def count_every(self, t):
        return len(re.findall(r"timer failed", t.log))


LOG_SCRIPT = r'''
local tokend = require "tokend"
tokend.route("GET", "/log", function(req)
  tokend.log.info("user said", req.query.q, { user = req.query.u, n = 42, ok = true })
  req.log.user = "ada"
  req.log.plan = "pro"
  return 204
end)
tokend.route("GET", "/mint", function(req)
  req.log.user = "grace"
  local token = tokend.generate_temp_token(30, { max_session_duration_seconds = 600 })
  return 200, { token = token }
end)
'''


class Logging(TokendTestCase):
    def test_text_lines_cannot_be_forged(self):
        t = self.tokend(key=None, script=self.write("l.lua", LOG_SCRIPT))
        t.get("/log?q=a%0A2026-01-01T00:00:00.000Z%20error%20forged&u=x%20y")
        log = t.wait_log("access")
        self.assertNotRegex(log, r"(?m)^2026-01-01T00:00:00.000Z error forged")
        self.assertIn("\\n2026-01-01", log)
        line = [l for l in log.splitlines() if "user said" in l][0]
        self.assertIn("user said a\\n2026-01-01T00:00:00.000Z error forged", line)
        for pair in ['user="x y"', "n=42", "ok=true"]:
            self.assertIn(f" {pair}", line)
        access = [l for l in log.splitlines() if "access 127.0.0.1 GET /log 204" in l][0]
        self.assertIn(" user=ada", access)
        self.assertIn(" plan=pro", access)

    def test_json_lines_and_the_audit_of_a_mint(self):
        fake = self.fake()
        t = self.tokend(fake=fake, script=self.write("l.lua", LOG_SCRIPT), args=["--log-format", "json"])
        t.get("/log?q=hello&u=ada")
        token = t.get("/mint", headers={"Origin": "http://localhost:5173"}).json()["token"]
        t.stop()
        lines = [json.loads(l) for l in t.log.splitlines() if l.startswith("{")]
        logs = [l for l in lines if l.get("msg") == "user said hello"]
        self.assertEqual(len(logs), 1)
        self.assertEqual((logs[0]["user"], logs[0]["n"], logs[0]["ok"], logs[0]["type"]), ("ada", 42, True, "log"))
        access = [l for l in lines if l.get("type") == "access" and l["path"] == "/log"][0]
        self.assertEqual((access["user"], access["plan"]), ("ada", "pro"))
        audit = [l for l in lines if l.get("type") == "audit"]
        self.assertEqual(len(audit), 1, "one audit line per mint")
        a = audit[0]
        self.assertEqual((a["event"], a["client"], a["user"], a["origin"], a["outcome"]),
                         ("token_minted", "127.0.0.1", "grace", "http://localhost:5173", "minted"))
        self.assertEqual((a["expires_in_seconds"], a["max_session_duration_seconds"]), (30, 600))
        self.assertEqual(a["token_sha256"], hashlib.sha256(token.encode()).hexdigest()[:8])
        self.assertNotIn(token, t.log, "never the token itself")


if __name__ == "__main__":
    unittest.main()
