"""The example policies in examples/policies/, each tried as a new user would: a routes
script, its settings, and the requests a page and an attacker would send."""
import http.client
import json
import os
import re
import sys
import time
import unittest

from harness import SRC, TokendTestCase, make_ca, script_with
from servers import Redis

sys.path.insert(0, os.path.join(SRC, "tests", "fakes"))
from backend import Backend  # noqa: E402
from idp import Idp, KeySet, hs256  # noqa: E402


def policy(name):
    return os.path.join("examples", "policies", name)


def policy_script(name, folder, **constants):
    """An example policy, with the module it requires next to it."""
    return script_with(policy(name), folder, siblings=("answer.lua",), **constants)


class JwtPolicy(TokendTestCase):
    @classmethod
    def setUpClass(cls):
        import tempfile
        cls.folder = tempfile.mkdtemp(prefix="policy-jwt-", dir=os.environ.get("TOKEND_TEST_TMP"))
        cls.keys = KeySet(cls.folder, kinds=("rsa",))
        cls.ca = make_ca(cls.folder)

    def setUp(self):
        super().setUp()
        self.idp = Idp({"keys": [self.keys.jwk("rsa", "k1")]}, self.ca)
        self.addCleanup(self.idp.stop)
        self.fake_ = self.fake()
        self.t = self.tokend(fake=self.fake_, script=policy_script("jwt.lua", self.workdir, TOKEN_BURST=2), env={
            "JWKS_URL": self.idp.url, "JWT_ISSUER": "https://idp.test", "JWT_AUDIENCE": "my-app",
            "CURL_CA_BUNDLE": self.ca[0]})

    def bearer(self, **claims):
        base = {"iss": "https://idp.test", "aud": "my-app", "sub": "alice", "exp": int(time.time()) + 300}
        return {"Authorization": "Bearer " + self.keys.sign("rsa", "RS256", {**base, **claims}, kid="k1")}

    def test_signed_in_users_get_tokens_by_plan(self):
        r = self.t.get("/token", headers=self.bearer(plan="pro"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["max_session_duration_seconds"], 3600)
        self.assertEqual(self.fake_.stats()["last_query"]["max_session_duration_seconds"], "3600")
        self.assertEqual(self.t.get("/token", headers=self.bearer(sub="bob")).json()["max_session_duration_seconds"], 300)
        self.assertIn(" user=alice", self.t.wait_log("user=alice"))

    def test_everyone_else_is_refused(self):
        for headers in [{}, {"Authorization": "Bearer nonsense"}, self.bearer(aud="someone-else"),
                        self.bearer(exp=int(time.time()) - 3600), {"Authorization": "Basic YTpi"}]:
            r = self.t.get("/token", headers=headers)
            self.assertEqual(r.status, 401, headers)
            self.assertEqual(r.headers["www-authenticate"], 'Bearer realm="tokend"')
        self.assertEqual(self.fake_.stats()["requests"], 0)

    def test_an_identity_provider_that_is_down_gets_503_and_refusals_are_logged_by_kind(self):
        self.idp.fault = "500"
        r = self.t.get("/token", headers=self.bearer())
        self.assertEqual((r.status, r.headers["retry-after"]), (503, "30"))
        self.assertIn("identity provider unavailable", self.t.wait_log("identity provider unavailable"))
        self.idp.fault = None
        t = self.tokend(fake=self.fake_, script=policy_script("jwt.lua", self.workdir, TOKEN_BURST=2), env={
            "JWKS_URL": self.idp.url, "JWT_ISSUER": "https://idp.test", "JWT_AUDIENCE": "my-app",
            "CURL_CA_BUNDLE": self.ca[0]})
        self.assertEqual(t.get("/token", headers=self.bearer(exp=int(time.time()) - 3600)).status, 401)
        self.assertIn("kind=expired", t.wait_log("kind=expired"))
        self.assertEqual(self.fake_.stats()["requests"], 0)

    def test_each_user_has_a_limit_of_their_own(self):
        alice, bob = self.bearer(), self.bearer(sub="bob")
        self.assertEqual([self.t.get("/token", headers=alice).status for _ in range(3)], [200, 200, 429])
        self.assertEqual(self.t.get("/token", headers=bob).status, 200, "bob is not limited by alice")


class SessionCookiePolicy(TokendTestCase):
    def setUp(self):
        super().setUp()
        self.backend = Backend()
        self.backend.passwords = {"open sesame": "carol"}
        self.addCleanup(self.backend.stop)
        self.fake_ = self.fake()
        self.t = self.tokend(fake=self.fake_, script=policy_script("session-cookie.lua", self.workdir),
                             env={"SESSION_SECRET": "0123456789abcdef0123456789abcdef", "AUTH_URL": self.backend.url})

    def login(self, password):
        conn = http.client.HTTPConnection("127.0.0.1", self.t.port)
        conn.request("POST", "/login", body=json.dumps({"password": password}), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        return r.status, r.headers.get("Set-Cookie")

    def test_login_then_tokens(self):
        self.assertEqual(self.login("wrong")[0], 401)
        status, cookie = self.login("open sesame")
        self.assertEqual(status, 204)
        self.assertRegex(cookie, r"^tokend_session=carol\.\d+\.[\w-]+; Max-Age=43200; Path=/; HttpOnly; SameSite=Lax$")
        value = cookie.split(";")[0]
        self.assertEqual(self.t.get("/token").status, 401, "no cookie, no token")
        r = self.t.get("/token", headers={"Cookie": value})
        self.assertEqual(r.status, 200, r)
        user, expiry, sig = value.split("=", 1)[1].split(".")
        for forged in [f"tokend_session=mallory.{expiry}.{sig}", f"tokend_session=carol.{int(expiry) + 999}.{sig}",
                       f"tokend_session=carol.{expiry}.{sig[:-2]}xx", "tokend_session=carol"]:
            self.assertEqual(self.t.get("/token", headers={"Cookie": forged}).status, 401, forged)
        self.assertEqual(self.fake_.stats()["requests"], 1)

    def test_an_expired_cookie_is_refused(self):
        import base64
        import hashlib
        import hmac
        value = f"carol.{int(time.time()) - 10}"
        sig = base64.urlsafe_b64encode(hmac.new(b"0123456789abcdef0123456789abcdef", value.encode(),
                                                hashlib.sha256).digest()).rstrip(b"=").decode()
        self.assertEqual(self.t.get("/token", headers={"Cookie": f"tokend_session={value}.{sig}"}).status, 401)
        fresh = f"carol.{int(time.time()) + 100}"
        sig = base64.urlsafe_b64encode(hmac.new(b"0123456789abcdef0123456789abcdef", fresh.encode(),
                                                hashlib.sha256).digest()).rstrip(b"=").decode()
        self.assertEqual(self.t.get("/token", headers={"Cookie": f"tokend_session={fresh}.{sig}"}).status, 200,
                         "a cookie your own app signs works the same")


class BackendCheckPolicy(TokendTestCase):
    def setUp(self):
        super().setUp()
        self.backend = Backend()
        self.backend.decisions = {"Bearer good": {"allowed": True, "user": "dave"},
                                  "Bearer banned": {"allowed": False}}
        self.addCleanup(self.backend.stop)
        self.fake_ = self.fake()
        self.t = self.tokend(fake=self.fake_, script=policy_script("backend-check.lua", self.workdir),
                             env={"AUTH_URL": self.backend.url + "/check"}, workers=2)

    def test_the_backend_decides_and_is_asked_once_a_minute(self):
        for _ in range(5):
            self.assertEqual(self.t.get("/token", headers={"Authorization": "Bearer good"}).status, 200)
        self.assertEqual(self.backend.checks, 1, "one question; the answer is cached for all workers")
        self.assertEqual(self.t.get("/token", headers={"Authorization": "Bearer banned"}).status, 403)
        self.assertEqual(self.t.get("/token").status, 403, "no credentials")
        self.assertIn(" user=dave", self.t.wait_log("user=dave"))

    def test_a_backend_that_is_down_gets_503(self):
        t = self.tokend(fake=self.fake_, script=policy_script("backend-check.lua", self.workdir),
                        env={"AUTH_URL": "http://127.0.0.1:1/check"})
        r = t.get("/token", headers={"Authorization": "Bearer good"})
        self.assertEqual(r.status, 503)
        self.assertEqual(r.headers["retry-after"], "5")


class QuotaPolicy(TokendTestCase):
    def test_a_daily_budget_of_streaming_seconds(self):
        fake = self.fake()
        t = self.tokend(fake=fake, script=policy_script("quota.lua", self.workdir, DAILY_SECONDS=1500),
                        env={"JWT_SECRET": "quota-secret"}, workers=2)
        erin = {"Authorization": "Bearer " + hs256("quota-secret", {"sub": "erin", "exp": int(time.time()) + 60})}
        granted = []
        for _ in range(3):
            r = t.get("/token", headers=erin)
            self.assertEqual(r.status, 200, r)
            granted.append(r.json()["max_session_duration_seconds"])
        self.assertEqual(granted, [600, 600, 300], "the last one is clamped to what is left")
        r = t.get("/token", headers=erin)
        self.assertEqual(r.status, 429)
        seconds_to_midnight = 86400 - int(time.time()) % 86400
        self.assertAlmostEqual(int(r.headers["retry-after"]), seconds_to_midnight, delta=5)
        frank = {"Authorization": "Bearer " + hs256("quota-secret", {"sub": "frank", "exp": int(time.time()) + 60})}
        self.assertEqual(t.get("/token", headers=frank).status, 200, "another user has a budget of their own")
        self.assertEqual(t.get("/token").status, 401)
        wrong = {"Authorization": "Bearer " + hs256("not-the-secret", {"sub": "erin", "exp": int(time.time()) + 60})}
        self.assertEqual(t.get("/token", headers=wrong).status, 401)


class ReadmeExample(TokendTestCase):
    """The complete example in the README, run as it is printed, with the settings it names."""

    def test_the_complete_example_in_the_readme_runs(self):
        with open(os.path.join(SRC, "README.md")) as f:
            example = re.search(r"### A complete example\n.*?```lua\n(.*?)```", f.read(), re.S).group(1)
        keys = KeySet(self.workdir, kinds=("rsa",))
        ca = make_ca(self.workdir)
        idp = Idp({"keys": [keys.jwk("rsa", "k1")]}, ca)
        self.addCleanup(idp.stop)
        redis = Redis(self.workdir)
        self.addCleanup(redis.stop)
        fake = self.fake()
        env = {"JWKS_URL": idp.url, "JWT_ISSUER": "https://idp.test", "CURL_CA_BUNDLE": ca[0],
               "TOKEND_REDIS_URL": redis.url}
        script = self.write("example.lua", example)
        t = self.tokend(fake=fake, script=script, env=env)

        def bearer(sub, **claims):
            claims = {"iss": "https://idp.test", "aud": "my-app", "sub": sub, "exp": int(time.time()) + 300, **claims}
            return {"Authorization": "Bearer " + keys.sign("rsa", "RS256", claims, kid="k1")}

        for headers in [{}, bearer("alice", aud="another-app"), bearer("alice", iss="https://evil.test")]:
            r = t.get("/token", headers=headers)
            self.assertEqual((r.status, r.headers["www-authenticate"]), (401, "Bearer"), headers)
        self.assertEqual(fake.stats()["requests"], 0, "no token for strangers")

        r = t.get("/token", headers=bearer("alice"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(set(r.json()), {"token", "expires_in_seconds", "websocket_url"})
        self.assertEqual(r.headers["cache-control"], "no-store")
        self.assertEqual(fake.stats()["last_query"]["max_session_duration_seconds"], "1800")
        self.assertIn(" user=alice", t.wait_log("user=alice"))

        redis.command("SET", "tokend:revoked:bob", "yes")
        self.assertEqual(t.get("/token", headers=bearer("bob")).status, 403, "revoked with redis-cli")

        # burst = 5, counted in Redis: a second instance sees what the first took.
        t2 = self.tokend(fake=fake, script=script, env=env)
        self.assertEqual([t2.get("/token", headers=bearer("alice")).status for _ in range(5)], [200] * 4 + [429])
        self.assertTrue(redis.command("KEYS", "tokend.limiter:*"), "the limit is kept in Redis")
        self.assertEqual(t.get("/").status, 200)

        fake.control(fault="hang")
        t3 = self.tokend(fake=fake, script=script, env=env, args=["--upstream-timeout-ms", "300"])
        self.assertEqual(t3.get("/token", headers=bearer("carol")).status, 504)

        # The identity provider down, and no keys in hand: 503, whatever the token says.
        idp.fault = "500"
        t4 = self.tokend(fake=fake, script=script, env=env)
        for headers in [bearer("carol"), bearer("carol", iss="https://evil.test")]:
            r = t4.get("/token", headers=headers)
            self.assertEqual((r.status, r.headers["retry-after"]), (503, "30"), headers)
        self.assertEqual(t4.get("/token", headers={"Authorization": "Bearer nonsense"}).status, 401)
        # A setting left unset stops the script from loading instead of checking nothing.
        r = self.run_tokend(["--check", "--script", script], env={"JWKS_URL": idp.url, "TOKEND_REDIS_URL": redis.url})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("set JWT_ISSUER", r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()


class MeteredPolicy(TokendTestCase):
    """examples/policies/metered.lua: the relay with tickets or a session cookie, minutes
    charged from what the relay measured, sessions refused or ended when they run out."""

    def setUp(self):
        super().setUp()
        from harness import StreamingFake
        from wsclient import WsClient
        self.WsClient = WsClient
        self.fake_ = self.streaming_fake()
        self.t = self.tokend(fake=self.fake_, script=policy_script("metered.lua", self.workdir), env={
            "JWT_SECRET": "metered-secret", "MINUTES_PER_DAY": "0.05", "CHARGE_EVERY_SECONDS": "1",
            "SESSIONS_PER_USER": "1"})

    def jwt(self, user, secret="metered-secret"):
        return hs256(secret, {"sub": user, "exp": int(time.time()) + 300})

    def ticket(self, user):
        r = self.t.get("/ticket", method="POST", headers={"Authorization": "Bearer " + self.jwt(user)})
        self.assertEqual(r.status, 200, r)
        return r.json()["ticket"]

    def connect(self, query="", cookie=None, origin="http://127.0.0.1"):
        c = self.WsClient(self.t.port, "/v3/ws?sample_rate=16000" + query, origin=origin,
                          headers={"Cookie": f"session={cookie}"} if cookie else None)
        self.addCleanup(c.__exit__)
        return c

    def test_tickets_and_cookies(self):
        self.assertEqual(self.t.get("/ticket", method="POST").status, 401)
        wrong = {"Authorization": "Bearer " + self.jwt("erin", secret="not-the-secret")}
        self.assertEqual(self.t.get("/ticket", method="POST", headers=wrong).status, 401)
        self.assertEqual(self.connect().status, 401)
        self.assertEqual(self.connect(cookie=self.jwt("erin", secret="not-the-secret")).status, 401)
        ticket = self.ticket("erin")
        self.assertEqual(self.connect("&ticket=" + ticket, origin="https://evil.example").status, 403)
        c = self.connect("&ticket=" + ticket)
        self.assertEqual(c.status, 101)
        c.close()
        c.until_closed()
        self.assertEqual(self.connect("&ticket=" + ticket).status, 401, "a ticket opens one session")
        self.assertEqual(self.connect("&ticket=" + self.jwt("erin")).status, 401, "a session token is no ticket")
        self.assertEqual(self.t.get("/ticket", method="POST", headers={"Authorization": "Bearer " + ticket}).status,
                         401, "nor a ticket a session token")
        c = self.connect(cookie=self.jwt("erin"))
        self.assertEqual(c.status, 101)
        c.close()
        c.until_closed()

    def test_minutes_are_charged_refused_and_cut(self):
        erin = self.jwt("erin")
        a = self.connect("&ticket=" + self.ticket("erin"))
        self.assertEqual(a.recv_json()["type"], "Begin")
        self.assertEqual(self.connect(cookie=erin).status, 429, "one session at a time")
        a.stream(2.0)
        a.send_json({"type": "Terminate"})
        self.assertEqual(a.until_closed()[0], 1000)
        self.t.wait_log("relay session metered")
        # About a second is left: the next session is cut when it is spent.
        deadline = time.time() + 5
        while True:
            c = self.connect(cookie=erin)
            if c.status == 101 or time.time() > deadline:
                break
            time.sleep(0.1)            # the first session's end is being settled
        self.assertEqual(c.status, 101)
        c.stream(4)
        self.assertEqual(c.until_closed(), (4002, "today's transcription minutes are used up"))
        log = self.t.wait_log("cause=script")
        self.assertEqual(self.connect(cookie=erin).status, 429)
        r = self.t.get("/ticket", method="POST", headers={"Authorization": "Bearer " + erin})
        self.assertEqual(r.status, 429)
        self.assertGreater(int(r.headers["retry-after"]), 0)
        lines = [l for l in log.splitlines() if "relay session metered" in l]
        self.assertEqual(len(lines), 2, lines)
        first, second = (dict(re.findall(r"(\w+)=(\S+)", l)) for l in lines)
        self.assertEqual((first["user"], first["cause"], first["code"]), ("erin", "terminated", "1000"))
        self.assertGreaterEqual(float(first["seconds"]), 2.0)
        self.assertEqual((second["cause"], second["code"]), ("script", "4002"))
        self.assertGreaterEqual(float(second["seconds_today"]), 3.0)
        self.assertRegex(first["session"], r"^[0-9a-f]{16}$")
        self.assertEqual(self.connect(cookie=self.jwt("frank")).status, 101, "another user has minutes of their own")
