"""The example policies in examples/policies/, each tried as a new user would: a routes
script, its settings, and the requests a page and an attacker would send."""
import base64
import http.client
import json
import os
import re
import sys
import time
import unittest

from harness import CANARIES, SRC, TokendTestCase, copy_script, make_ca
from servers import Redis

sys.path.insert(0, os.path.join(SRC, "tests", "fakes"))
from backend import Backend  # noqa: E402
from idp import Idp, KeySet, hs256  # noqa: E402


def policy(name):
    return os.path.join("examples", "policies", name)


def policy_script(name, folder):
    """An example policy, with the module it requires next to it (its named values are set
    through the environment: policy={...})."""
    return copy_script(policy(name), folder, siblings=("answer.lua",))


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
        self.t = self.tokend(fake=self.fake_, script=policy_script("jwt.lua", self.workdir), policy={"TOKEN_BURST": 2}, env={
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
        t = self.tokend(fake=self.fake_, script=policy_script("jwt.lua", self.workdir), policy={"TOKEN_BURST": 2}, env={
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
        self.assertRegex(cookie, r"^tokend_session=carol\.\d+\.[\w-]+; Max-Age=43200; Path=/; Secure; HttpOnly; SameSite=Lax$")
        value = cookie.split(";")[0]
        self.assertEqual(self.t.get("/token").status, 401, "no cookie, no token")
        r = self.t.get("/token", headers={"Cookie": value})
        self.assertEqual(r.status, 200, r)
        user, expiry, sig = value.split("=", 1)[1].split(".")
        for forged in [f"tokend_session=mallory.{expiry}.{sig}", f"tokend_session=carol.{int(expiry) + 999}.{sig}",
                       f"tokend_session=carol.{expiry}.{sig[:-2]}xx", "tokend_session=carol"]:
            self.assertEqual(self.t.get("/token", headers={"Cookie": forged}).status, 401, forged)
        self.assertEqual(self.fake_.stats()["requests"], 1)

    def test_pages_of_other_origins_are_refused_and_each_user_is_limited(self):
        value = self.login("open sesame")[1].split(";")[0]
        for path, method in (("/login", "POST"), ("/token", "GET")):
            r = self.t.get(path, method=method, headers={"Origin": "https://evil.example", "Cookie": value},
                           body=json.dumps({"password": "open sesame"}) if method == "POST" else None)
            self.assertEqual(r.status, 403, path)
        self.assertEqual(self.t.get("/token", headers={"Origin": "https://app.example.com", "Cookie": value}).status, 200)
        statuses = [self.t.get("/token", headers={"Cookie": value}).status for _ in range(6)]
        self.assertEqual(statuses, [200] * 4 + [429] * 2, "five a burst, per user")

    def test_plain_http_cookies_for_local_tests(self):
        t = self.tokend(fake=self.fake_, script=policy_script("session-cookie.lua", self.workdir),
                        policy={"SECURE_COOKIE": "false"},
                        env={"SESSION_SECRET": "0123456789abcdef0123456789abcdef", "AUTH_URL": self.backend.url})
        conn = http.client.HTTPConnection("127.0.0.1", t.port)
        conn.request("POST", "/login", body=json.dumps({"password": "open sesame"}))
        r = conn.getresponse()
        r.read()
        self.assertNotIn("Secure", r.headers["Set-Cookie"])

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

    def test_a_decision_is_cached_under_every_credential_it_was_made_for(self):
        self.backend.decisions["Bearer good"] = {"allowed": True, "user": "dave"}
        headers = {"Authorization": "Bearer good", "Cookie": "app=1"}
        self.assertEqual(self.t.get("/token", headers=headers).status, 200)
        self.assertEqual(self.backend.checks, 1)
        for other in [{"Authorization": "Bearer good", "Cookie": "app=2"}, {"Authorization": "Bearer good"},
                      {"Cookie": "app=1"}]:
            self.t.get("/token", headers=other)
        self.assertEqual(self.backend.checks, 4, "another pair of credentials is another question")

    def test_each_user_is_limited(self):
        statuses = [self.t.get("/token", headers={"Authorization": "Bearer good"}).status for _ in range(7)]
        self.assertEqual(statuses, [200] * 5 + [429] * 2)

    def test_a_backend_that_is_down_gets_503(self):
        t = self.tokend(fake=self.fake_, script=policy_script("backend-check.lua", self.workdir),
                        env={"AUTH_URL": "http://127.0.0.1:1/check"})
        r = t.get("/token", headers={"Authorization": "Bearer good"})
        self.assertEqual(r.status, 503)
        self.assertEqual(r.headers["retry-after"], "5")


class QuotaPolicy(TokendTestCase):
    def test_a_daily_budget_of_streaming_seconds(self):
        fake = self.fake()
        t = self.tokend(fake=fake, script=policy_script("quota.lua", self.workdir), policy={"DAILY_SECONDS": 1500},
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

    def test_pending_reservations_are_not_a_used_up_day(self):
        import threading
        fake = self.fake(latency_ms=1500)
        t = self.tokend(fake=fake, script=policy_script("quota.lua", self.workdir), policy={"DAILY_SECONDS": 1200},
                        env={"JWT_SECRET": "quota-secret"})
        gail = {"Authorization": "Bearer " + hs256("quota-secret", {"sub": "gail", "exp": int(time.time()) + 60})}
        first = []
        threads = [threading.Thread(target=lambda: first.append(t.get("/token", headers=gail).status)) for _ in range(2)]
        for th in threads:
            th.start()
        deadline = time.time() + 10
        while fake.stats()["in_flight"] < 2 and time.time() < deadline:   # both reservations are pending
            time.sleep(0.02)
        r = t.get("/token", headers=gail)
        self.assertEqual((r.status, r.headers["retry-after"]), (503, "5"), "the day may not be over: retry shortly")
        for th in threads:
            th.join()
        self.assertEqual(first, [200, 200])
        r = t.get("/token", headers=gail)
        self.assertEqual(r.status, 429, "now it is")


class Settings(TokendTestCase):
    """Every example policy refuses to load without the settings it needs."""

    def test_a_missing_setting_stops_the_script(self):
        for name, needs in [("jwt.lua", {"JWKS_URL": "https://idp.test/jwks", "JWT_ISSUER": "i", "JWT_AUDIENCE": "a"}),
                            ("session-cookie.lua", {"SESSION_SECRET": "s" * 32, "AUTH_URL": "http://127.0.0.1:1"}),
                            ("backend-check.lua", {"AUTH_URL": "http://127.0.0.1:1"}),
                            ("quota.lua", {"JWT_SECRET": "x"})]:
            script = policy_script(name, self.workdir)
            check = ["--check", "--script", script, "--public", os.path.join(SRC, "public")]
            self.assertEqual(self.run_tokend(check, env=needs).returncode, 0, name)
            for missing in needs:
                with self.subTest(policy=name, missing=missing):
                    env = {k: v for k, v in needs.items() if k != missing}
                    p = self.run_tokend(check, env=env)
                    self.assertEqual(p.returncode, 1)
                    self.assertIn(f"set {missing}", p.stderr)


class ProvidersPolicy(TokendTestCase):
    """providers.lua: signed-in users get any vendor's credential at /token/<provider>, one
    limit and one audit line for all; every key a secret, each a canary."""
    KEYS = {"OPENAI_API_KEY": "po4c1e9a7b2d5f8a0c3e6b9dqz", "GEMINI_API_KEY": "pg7b3d1f9e5c2a8b4d0f6e2aqz",
            "DEEPGRAM_API_KEY": "pd2e8c4a6b0d9f1e3c5a7b8cqz", "SONIOX_API_KEY": "ps5a9c3e1b7d4f2a6c8e0b4dqz",
            "LIVEKIT_API_SECRET": "pl8d2f6b4a0c9e3d7f1b5a2c6e4d8fqz", "JWT_SECRET": "pj3f7b1d5a9c2e6b0d4f8a1c5e9bqz"}

    def setUp(self):
        super().setUp()
        from vendors import Vendors
        CANARIES.extend(v for v in self.KEYS.values() if v not in CANARIES)
        keys = self.KEYS
        self.vendors = Vendors({"openai": keys["OPENAI_API_KEY"], "gemini": keys["GEMINI_API_KEY"],
                                "deepgram": keys["DEEPGRAM_API_KEY"], "soniox": keys["SONIOX_API_KEY"]})
        self.addCleanup(self.vendors.stop)
        self.fake_ = self.fake()
        self.env = {**keys, "DEEPGRAM_PROJECT_ID": "p1", "LIVEKIT_API_KEY": "APIexample", "LIVEKIT_URL": "wss://lk.test",
                    "VENDOR_BASE_URL": self.vendors.url}
        self.t = self.start()

    def start(self, **policy):
        return self.tokend(fake=self.fake_, workers=2, script=policy_script("providers.lua", self.workdir),
                           env=self.env, policy={"TOKEN_BURST": 100, **policy})

    def bearer(self, sub, secret=None):
        token = hs256(secret or self.KEYS["JWT_SECRET"], {"sub": sub, "exp": int(time.time()) + 300})
        return {"Authorization": "Bearer " + token}

    def test_every_vendor_for_a_signed_in_user(self):
        for provider in ["assemblyai", "openai", "gemini", "deepgram", "soniox", "livekit"]:
            with self.subTest(provider):
                r = self.t.get(f"/token/{provider}", headers=self.bearer("alice"))
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.headers["cache-control"], "no-store")
                j = r.json()
                self.assertEqual(j["provider"], provider)
                self.assertTrue(j["token"])
                self.assertIsInstance(j["expires_in_seconds"], int)
        last = self.vendors.last
        self.assertEqual(last["soniox"]["json"]["client_reference_id"], "alice", "the user's reference, where kept")
        self.assertEqual(last["openai"]["headers"]["openai-safety-identifier"], "alice")
        self.assertIn("alice", last["deepgram"]["json"]["tags"])
        self.assertEqual(last["deepgram"]["path"], "/v1/projects/p1/keys")
        claims = json.loads(base64.urlsafe_b64decode(
            self.t.get("/token/livekit", headers=self.bearer("alice")).json()["token"].split(".")[1] + "=="))
        self.assertEqual((claims["sub"], claims["video"]["room"], claims["iss"]), ("alice", "support-alice", "APIexample"))
        log = self.t.wait_log("provider=livekit")
        for provider in ["openai", "gemini", "deepgram", "soniox", "livekit"]:
            self.assertRegex(log, rf"event=token_minted client=127\.0\.0\.1 user=alice .*outcome=minted provider={provider}")

    def test_strangers_and_unknown_vendors_are_refused(self):
        for headers in [{}, self.bearer("alice", secret="not-the-secret-0123456789"), {"Authorization": "Bearer x"}]:
            r = self.t.get("/token/openai", headers=headers)
            self.assertEqual(r.status, 401, headers)
            self.assertEqual(r.headers["www-authenticate"], 'Bearer realm="tokend"')
        self.assertEqual(self.t.get("/token/elevenlabs", headers=self.bearer("alice")).status, 404)
        self.assertEqual(sum(self.vendors.requests.values()), 0, "no vendor was asked")
        self.assertIn("event=token_refused", self.t.wait_log("status=401"), "refusals are audited")
        self.assertEqual(self.t.get("/token/openai", headers={**self.bearer("alice"), "Origin": "https://evil.test"}).status,
                         403)

    def test_one_limit_for_all_vendors(self):
        t = self.start(TOKEN_BURST=2, TOKENS_PER_MINUTE=2)
        statuses = [t.get(f"/token/{p}", headers=self.bearer("bob")).status for p in ("openai", "soniox", "gemini")]
        self.assertEqual(statuses, [200, 200, 429], "bob's two tokens, whichever vendor")
        self.assertEqual(t.get("/token/gemini", headers=self.bearer("carol")).status, 200, "carol has her own")

    def test_a_vendor_failure_is_an_answer_not_a_crash(self):
        self.vendors.fault = "429"
        r = self.t.get("/token/soniox", headers=self.bearer("alice"))
        self.assertEqual((r.status, r.headers.get("retry-after")), (503, "9"))
        self.vendors.fault = "500"
        self.assertEqual(self.t.get("/token/openai", headers=self.bearer("alice")).status, 502)
        self.assertIn("outcome=upstream_error provider=openai", self.t.wait_log("outcome=upstream_error"))

    def test_livekit_s_standard_endpoint(self):
        r = self.t.get("/livekit/token", method="POST", headers=self.bearer("dana"), body="{}")
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.json()["server_url"], "wss://lk.test")
        self.assertEqual(self.t.get("/livekit/token", method="POST", body="{}").status, 401)

    def test_a_vendor_offered_without_its_key_stops_the_script(self):
        env = {k: v for k, v in self.env.items() if k != "GEMINI_API_KEY"}
        r = self.run_tokend(["--check", "--script", policy_script("providers.lua", self.workdir)], env=env)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("the secret GEMINI_API_KEY is not set", r.stdout + r.stderr)
        r = self.run_tokend(["--check", "--script", policy_script("providers.lua", self.workdir),
                             "--public", os.path.join(SRC, "public")], env={**env, "PROVIDERS": "openai,soniox"})
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


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
        # A revocation list that cannot be read serves nobody (a revoked user stays out).
        redis.stop()
        r = t.get("/token", headers=bearer("bob"))
        self.assertEqual((r.status, r.headers["retry-after"]), (503, "5"), "Redis down: no one is served")
        self.assertRegex(t.log, r"event=token_refused .*user=bob .*status=403")
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
