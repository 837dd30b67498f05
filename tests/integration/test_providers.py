"""The provider modules (require "tokend.providers.<vendor>") against fakes that check what
each vendor checks (tests/fakes/vendors.py), with a canary secret per vendor that must never
show up in an answer, a log line or the process's environment."""
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import unittest

from harness import CANARIES, CANARY_KEY, SRC, TokendTestCase

sys.path.insert(0, os.path.join(SRC, "tests", "fakes"))
from vendors import Vendors  # noqa: E402

# Canaries with no word in them: redaction takes any 8 characters of a secret in a row, so a
# key holding "deepgram" would redact the word wherever it is written.
KEYS = {
    "openai": "oa9f8e7d6c5b4a3f2e1d0cqz",
    "gemini": "gm1a2b3c4d5e6f7a8b9c0dqz",
    "deepgram": "dg0123456789abcdef0123qz",
    "soniox": "sxfedcba9876543210fedcqz",
    "speechmatics": "sm5a6b7c8d9e0f1a2b3c4dqz",
}
LIVEKIT_SECRET = "lk0f1e2d3c4b5a69788796a5b4c3d2e1qz"
CANARIES.extend(list(KEYS.values()) + [LIVEKIT_SECRET])

SECRET_ENV = {
    "OPENAI_API_KEY": KEYS["openai"], "GEMINI_API_KEY": KEYS["gemini"], "DEEPGRAM_API_KEY": KEYS["deepgram"],
    "SONIOX_API_KEY": KEYS["soniox"], "SPEECHMATICS_API_KEY": KEYS["speechmatics"],
    "LIVEKIT_API_SECRET": LIVEKIT_SECRET,
}

PROVIDERS_SCRIPT = r'''
local tokend = require "tokend"
local base = tokend.env("VENDORS_URL")
local timeout = tonumber(tokend.env("VENDOR_TIMEOUT_MS") or "3000")
local function provider(name) return require("tokend.providers." .. name) end
local P = {
  openai = provider("openai").new{ api_key = tokend.secret("OPENAI_API_KEY"), base_url = base, timeout_ms = timeout,
    session = { type = "realtime", model = "gpt-realtime", instructions = "Be brief." } },
  gemini = provider("gemini").new{ api_key = tokend.secret("GEMINI_API_KEY"), base_url = base, timeout_ms = timeout,
    model = "gemini-live-2.5-flash-preview", uses = 2,
    config = { generationConfig = { responseModalities = { "AUDIO" } } } },
  deepgram = provider("deepgram").new{ api_key = tokend.secret("DEEPGRAM_API_KEY"), base_url = base,
    timeout_ms = timeout, expires_in_seconds = 45 },
  deepgram_key = provider("deepgram").new{ api_key = tokend.secret("DEEPGRAM_API_KEY"), base_url = base,
    timeout_ms = timeout, mode = "key", project_id = "proj 1", tags = { "tokend" }, expires_in_seconds = 120 },
  soniox = provider("soniox").new{ api_key = tokend.secret("SONIOX_API_KEY"), base_url = base, timeout_ms = timeout,
    max_session_duration_seconds = 900 },
  speechmatics = provider("speechmatics").new{ api_key = tokend.secret("SPEECHMATICS_API_KEY"), base_url = base,
    timeout_ms = timeout, expires_in_seconds = 90 },
  livekit = provider("livekit").new{ api_key = "APIcanaryKey", api_secret = tokend.secret("LIVEKIT_API_SECRET"),
    server_url = "wss://lk.example.test", room = "support", expires_in_seconds = 300,
    client_may_set = { "participant_name", "room_name" } },
  assemblyai = provider("assemblyai").new{},
  assemblyai_eu = provider("assemblyai").new{ region = "eu", max_session_duration_seconds = 600 },
  voice_agent = provider("assemblyai").new{ product = "voice_agent" },
}
tokend.route("GET", "/mint/:p", function(req)
  req.log.user = req.query.user
  local user = req.query.user ~= "" and req.query.user or nil
  local token, info, status, failure = P[req.params.p].mint{ user = user }
  if not token then return 200, { err = info, status = status, failure = failure } end
  return 200, { token = token, info = info }
end, { audit = true })
tokend.route("POST", "/livekit/token", function(req)
  return P.livekit.endpoint(req, req.headers["x-user"] or "anonymous")
end)
'''


def b64json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


class ProviderCase(TokendTestCase):
    """A tokend with every provider, the vendors' fake and two AssemblyAI fakes (eu, agents)."""

    def setUp(self):
        super().setUp()
        self.vendors = Vendors(KEYS)
        self.addCleanup(self.vendors.stop)
        self.aai = self.fake()
        self.eu = self.fake()
        self.agents = self.fake()
        self.t = self.start()

    def start(self, **env):
        return self.tokend(fake=self.aai, workers=1, script=self.write("providers.lua", PROVIDERS_SCRIPT), env={
            "VENDORS_URL": self.vendors.url, **SECRET_ENV,
            "ASSEMBLYAI_REGION_URLS": f"eu={self.eu.url}, us={self.aai.url}", "ASSEMBLYAI_AGENTS_URL": self.agents.url,
            **env})

    def mint(self, provider, user="alice", t=None):
        r = (t or self.t).get(f"/mint/{provider}?user={user}")
        self.assertEqual(r.status, 200, r)
        return r.json()


# Each vendor-backed provider: the vendor, the request it must send (method, path, the auth
# header and its exact form, what the JSON body must hold) and what info must say.
SHAPES = [
    ("openai", "openai", "/v1/realtime/client_secrets", ("authorization", "Bearer " + KEYS["openai"]),
     {"expires_after": {"anchor": "created_at", "seconds": 600},
      "session": {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."}},
     {"openai-safety-identifier": "alice"}, {"url": "https://api.openai.com/v1/realtime/calls", "model": "gpt-realtime"}),
    ("gemini", "gemini", "/v1alpha/auth_tokens", ("x-goog-api-key", KEYS["gemini"]),
     {"uses": 2, "bidiGenerateContentSetup": {"model": "models/gemini-live-2.5-flash-preview",
                                              "generationConfig": {"responseModalities": ["AUDIO"]}}},
     {}, {"uses": 2, "expires_in_seconds": 60}),
    ("deepgram", "deepgram", "/v1/auth/grant", ("authorization", "Token " + KEYS["deepgram"]),
     {"ttl_seconds": 45}, {}, {"kind": "grant", "expires_in_seconds": 45, "scheme": "Bearer"}),
    ("deepgram_key", "deepgram", "/v1/projects/proj%201/keys", ("authorization", "Token " + KEYS["deepgram"]),
     {"comment": "tokend", "scopes": ["usage:write"], "tags": ["tokend", "alice"], "time_to_live_in_seconds": 120},
     {}, {"kind": "key", "expires_in_seconds": 120, "scheme": "Token"}),
    ("soniox", "soniox", "/v1/auth/temporary-api-key", ("authorization", "Bearer " + KEYS["soniox"]),
     {"usage_type": "transcribe_websocket", "expires_in_seconds": 60, "single_use": True,
      "max_session_duration_seconds": 900, "client_reference_id": "alice"},
     {}, {"single_use": True, "websocket_url": "wss://stt-rt.soniox.com/transcribe-websocket"}),
    ("speechmatics", "speechmatics", "/v1/api_keys", ("authorization", "Bearer " + KEYS["speechmatics"]),
     {"ttl": 90, "client_ref": "alice"}, {}, {"expires_in_seconds": 90}),
]
TOKEN_FIELD = {"openai": "value", "gemini": "name", "soniox": "api_key", "speechmatics": "key_value"}


class Shapes(ProviderCase):
    def test_each_vendor_gets_the_request_its_reference_documents(self):
        for provider, vendor, path, (auth_name, auth_value), body, headers, info in SHAPES:
            with self.subTest(provider):
                j = self.mint(provider)
                self.assertIn("token", j, j)
                last = self.vendors.last[vendor]
                self.assertEqual((last["method"], last["path"]), ("POST", path))
                self.assertEqual(last["headers"].get(auth_name), auth_value, "the auth header's exact form")
                self.assertTrue(last["headers"]["content-type"].startswith("application/json"))
                for name, value in body.items():
                    self.assertEqual(last["json"].get(name), value, name)
                for name, value in headers.items():
                    self.assertEqual(last["headers"].get(name), value, name)
                issued = self.vendors.issued[vendor][-1]
                token_field = "access_token" if provider == "deepgram" else "key" if provider == "deepgram_key" \
                    else TOKEN_FIELD[vendor]
                self.assertEqual(j["token"], issued[token_field], "the vendor's credential, as it was issued")
                self.assertEqual(j["info"]["provider"], vendor)
                self.assertIsInstance(j["info"]["expires_in_seconds"], int)
                for name, value in info.items():
                    self.assertEqual(j["info"].get(name), value, name)
        self.assertEqual(self.vendors.last["speechmatics"]["query"], {"type": "rt"})
        gemini = self.vendors.last["gemini"]["json"]
        ahead = iso_seconds(gemini["newSessionExpireTime"]) - time.time()
        self.assertTrue(50 <= ahead <= 61, ahead)
        self.assertTrue(1790 <= iso_seconds(gemini["expireTime"]) - time.time() <= 1801)
        self.assertNotIn("fieldMask", gemini, "without lock_additional_fields every field of the setup is locked")
        log = self.t.wait_log("provider=speechmatics")
        for provider, vendor, *_ in SHAPES:
            self.assertRegex(log, rf"audit token event=token_minted .*user=alice.* outcome=minted provider={vendor} "
                                  r"token_sha256=[0-9a-f]{8}")
        self.assertNotIn("token_refused", log, "an audited route whose handler minted writes the mint's line only")

    def test_no_user_no_reference(self):
        self.mint("soniox", user="")
        self.assertNotIn("client_reference_id", self.vendors.last["soniox"]["json"])
        self.mint("openai", user="")
        self.assertNotIn("openai-safety-identifier", self.vendors.last["openai"]["headers"])


def iso_seconds(text):
    import datetime
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# Faults of the vendors and what every provider makes of them: (fault, status, kind, retry_after).
FAULTS = [
    ("401", 401, "unauthorized", None),
    ("429", 429, "rate_limited", 9),
    ("500", 500, "upstream_error", None),
    ("503", 503, "upstream_error", None),
    ("garbage", 200, "bad_response", None),
    ("notoken", None, "bad_response", None),
    ("reset", None, "network", None),
    ("hang", None, "timeout", None),
]
VENDOR_PROVIDERS = ["openai", "gemini", "deepgram", "deepgram_key", "soniox", "speechmatics"]


class Failures(ProviderCase):
    def start(self, **env):
        return super().start(VENDOR_TIMEOUT_MS="700", **env)

    def test_every_fault_is_a_failure_of_tokend_s_kinds(self):
        for fault, status, kind, retry_after in FAULTS:
            self.vendors.fault = fault
            for provider in VENDOR_PROVIDERS:
                with self.subTest(fault=fault, provider=provider):
                    j = self.mint(provider)
                    self.assertNotIn("token", j)
                    self.assertEqual(j["failure"]["kind"], kind, j)
                    if status not in (None, 200) or fault == "garbage":
                        self.assertEqual(j.get("status"), status, j)
                    self.assertEqual(j["failure"].get("retry_after"), retry_after)
                    self.assertTrue(j["err"].startswith(provider.split("_")[0] + ": "), j["err"])
        log = self.t.wait_log("outcome=timeout provider=speechmatics")
        self.assertIn("outcome=rate_limited provider=soniox", log, "a failure leaves an audit line too")
        self.assertIn("token request failed (unauthorized): openai: the upstream refused the API key (HTTP 401)", log)

    def test_a_vendor_that_echoes_the_key_is_redacted(self):
        self.vendors.fault = "401-echo"
        for provider in VENDOR_PROVIDERS:
            with self.subTest(provider):
                j = self.mint(provider)
                self.assertEqual(j["failure"]["kind"], "unauthorized")
        errors = json.dumps([self.mint(p)["err"] for p in ("openai", "deepgram", "soniox")])
        self.assertIn("[redacted]", errors, "the vendor's words are kept, the key is not")
        self.t.stop()
        log = self.t.log
        for key in KEYS.values():
            pieces = {key[i:i + 8].lower() for i in range(len(key) - 7)}
            self.assertFalse([p for p in pieces if p in log.lower()], "no 8 characters of a key in the log")


    def test_a_key_the_vendor_does_not_know(self):
        self.vendors.keys = {vendor: "not-the-key-123" for vendor in KEYS}
        kinds = {p: self.mint(p)["failure"]["kind"] for p in VENDOR_PROVIDERS}
        self.assertEqual(kinds, {"openai": "unauthorized", "gemini": "bad_request", "deepgram": "unauthorized",
                                 "deepgram_key": "unauthorized", "soniox": "unauthorized",
                                 "speechmatics": "unauthorized"}, "Google answers an unknown key 400")


class SecretsStayInC(ProviderCase):
    def test_no_secret_in_the_environment_or_in_lua(self):
        self.mint("openai")
        with open(f"/proc/{self.t.proc.pid}/environ", "rb") as f:
            environ = f.read()
        for name, value in SECRET_ENV.items():
            self.assertNotIn(name.encode() + b"=", environ, "the entry is gone, not only its value")
            self.assertNotIn(value.encode(), environ)
        self.assertNotIn(CANARY_KEY.encode(), environ)

    def test_a_reload_finds_the_secrets_it_declared_before(self):
        import signal
        t = self.start(VENDOR_TIMEOUT_MS="2000")
        t.proc.send_signal(signal.SIGHUP)
        self.assertNotIn("reload failed", t.wait_log("reloaded"), "the variables are gone; the secrets are not")
        for provider in ["soniox", "livekit", "openai"]:
            self.assertIn("token", self.mint(provider, t=t), provider)
        self.assertEqual(self.vendors.last["soniox"]["headers"]["authorization"], "Bearer " + KEYS["soniox"])

    def test_secrets_in_a_dot_env_file_are_taken_and_wiped(self):
        self.write(".env", "".join(f"{name}={value}\n" for name, value in SECRET_ENV.items()))
        env = {name: "" for name in SECRET_ENV}
        t = self.tokend(fake=self.aai, workers=2, script=self.write("providers.lua", PROVIDERS_SCRIPT),
                        env={"VENDORS_URL": self.vendors.url, **env})
        j = self.mint("soniox", t=t)
        self.assertIn("token", j, j)
        self.assertEqual(self.vendors.last["soniox"]["headers"]["authorization"], "Bearer " + KEYS["soniox"])
        self.assertNotIn("note:", t.log, "names taken as secrets are not reported as unknown settings")


class LiveKit(ProviderCase):
    def verify(self, token):
        head, payload, sig = token.split(".")
        want = hmac.new(LIVEKIT_SECRET.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
        self.assertEqual(base64.urlsafe_b64encode(want).rstrip(b"=").decode(), sig, "HS256 with the API secret")
        self.assertEqual(b64json(head)["alg"], "HS256")
        return b64json(payload)

    def test_tokend_signs_the_access_token(self):
        j = self.mint("livekit", user="bob")
        claims = self.verify(j["token"])
        self.assertEqual((claims["iss"], claims["sub"]), ("APIcanaryKey", "bob"), "iss: the API key; sub: the identity")
        self.assertEqual(claims["exp"] - claims["nbf"], 300)
        self.assertLessEqual(abs(claims["nbf"] - time.time()), 5)
        self.assertEqual(claims["video"], {"room": "support", "roomJoin": True, "canPublish": True,
                                           "canSubscribe": True, "canPublishData": True})
        self.assertEqual(j["info"], {"provider": "livekit", "expires_in_seconds": 300,
                                     "server_url": "wss://lk.example.test", "room": "support", "identity": "bob"})
        self.assertRegex(self.t.wait_log("provider=livekit"), r"outcome=minted provider=livekit token_sha256=")

    def test_the_standard_token_endpoint(self):
        r = self.t.get("/livekit/token", method="POST", headers={"X-User": "carol", "Content-Type": "application/json"},
                       body=json.dumps({"room_name": "room-7", "participant_name": "Carol",
                                        "participant_identity": "carol"}))
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.headers["cache-control"], "no-store")
        j = r.json()
        self.assertEqual(set(j), {"server_url", "participant_token"})
        self.assertEqual(j["server_url"], "wss://lk.example.test")
        claims = self.verify(j["participant_token"])
        self.assertEqual((claims["sub"], claims["name"], claims["video"]["room"]), ("carol", "Carol", "room-7"))
        self.assertEqual(self.t.get("/livekit/token", method="POST", headers={"X-User": "dan"}).status, 201,
                         "every field is optional")
        for body, field in [({"participant_identity": "mallory"}, "participant_identity"),
                            ({"participant_metadata": "admin"}, "participant_metadata"),
                            ({"room_config": {"agents": []}}, "room_config")]:
            r = self.t.get("/livekit/token", method="POST", headers={"X-User": "dan"}, body=json.dumps(body))
            self.assertEqual(r.status, 400, body)
            self.assertIn(field, r.json()["error"])
        self.assertEqual(self.t.get("/livekit/token", method="POST", body="[1,").status, 400)


class AssemblyAI(ProviderCase):
    def test_regions_and_the_voice_agent(self):
        j = self.mint("assemblyai_eu")
        self.assertEqual(j["info"]["region"], "eu")
        self.assertEqual(j["info"]["websocket_url"], self.eu.url.replace("http://", "ws://") + "/v3/ws",
                         "the socket is the zone's the token was minted in")
        self.assertEqual(self.eu.stats()["last_query"], {"expires_in_seconds": "60", "max_session_duration_seconds": "600"})
        self.assertEqual(self.aai.stats()["requests"], 0)
        j = self.mint("voice_agent")
        self.assertEqual((j["info"]["product"], j["info"]["provider"]), ("voice_agent", "assemblyai"))
        self.assertEqual(j["info"]["websocket_url"], self.agents.url.replace("http://", "ws://") + "/v1/ws")
        stats = self.agents.stats()
        self.assertEqual((stats["last_path"], stats["last_authorization"]), ("/v1/token", CANARY_KEY))
        j = self.mint("assemblyai")
        self.assertEqual(j["info"]["websocket_url"], self.aai.url.replace("http://", "ws://") + "/v3/ws")
        self.assertNotIn("region", j["info"])


class DefaultScript(TokendTestCase):
    """The default script's regions and its account-wide guard."""

    def test_the_page_may_pick_a_region_the_policy_offers(self):
        aai, eu = self.fake(), self.fake()
        t = self.tokend(fake=aai, env={"ASSEMBLYAI_REGION_URLS": f"eu={eu.url}, us={aai.url}"},
                        policy={"TOKENS_PER_MINUTE": 1000, "TOKEN_BURST": 1000, "REGIONS": "eu"})
        config = t.get("/config").json()
        self.assertEqual((config["regions"], config.get("default_region")), (["eu"], None))
        r = t.get("/token?region=eu&speech_model=u3-rt-pro")
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.json()["websocket_url"].startswith(eu.url.replace("http://", "ws://") + "/v3/ws?speech_model=u3-rt-pro"),
                        "the socket is in the zone the token was minted in")
        self.assertEqual((eu.stats()["requests"], aai.stats()["requests"]), (1, 0))
        r = t.get("/token")
        self.assertTrue(r.json()["websocket_url"].startswith(aai.url.replace("http://", "ws://")), "no region: the default")
        self.assertEqual(aai.stats()["requests"], 1)
        csp = t.get("/").headers["content-security-policy"]
        self.assertIn(eu.url.replace("http://", "ws://"), csp, "the page may open the zone's socket")

    def test_a_region_not_offered_is_a_400_naming_it(self):
        aai = self.fake()
        for regions, message in [("eu", 'region "us" is not offered (one of eu)'),
                                 ("", 'region "us" is not offered by this server')]:
            with self.subTest(regions=regions):
                t = self.tokend(fake=aai, policy={"TOKEN_BURST": 100, "REGIONS": regions})
                r = t.get("/token?region=us")
                self.assertEqual(r.status, 400)
                self.assertEqual(r.json(), {"error": message, "parameter": "region"})
                if not regions:
                    self.assertNotIn("regions", t.get("/config").json(), "the page shows no region choice")
        self.assertEqual(aai.stats()["requests"], 0)
        r = self.run_tokend(["--check", "--script", os.path.join(SRC, "scripts", "routes.lua")],
                            env={"REGIONS": "mars"})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("REGIONS names mars", r.stdout + r.stderr)

    def test_sessions_per_minute_guards_the_account(self):
        aai = self.fake()
        t = self.tokend(fake=aai, workers=2, policy={"TOKENS_PER_MINUTE": 1000, "TOKEN_BURST": 1000,
                                                     "SESSIONS_PER_MINUTE": 3})
        statuses = [t.get("/token", headers={"X-Forwarded-For": f"198.51.100.{i}"}).status for i in range(3)]
        self.assertEqual(statuses, [200, 200, 200])
        r = t.get("/token")
        self.assertEqual(r.status, 503)
        self.assertIn("3 streaming sessions a minute", r.json()["error"])
        self.assertIn(int(r.headers["retry-after"]), range(1, 21), "one session every 20 s")
        self.assertEqual(aai.stats()["requests"], 3, "refused before AssemblyAI is asked")
        self.assertIn("event=token_refused", t.wait_log("event=token_refused"), "the refusal is audited")
        t2 = self.tokend(fake=aai, policy={"TOKEN_BURST": 1000})
        self.assertEqual([t2.get("/token").status for _ in range(5)], [200] * 5, "off by default")


# Scripts that must not load, and what the error must name.
BAD_SCRIPTS = [
    ('require("tokend.providers.soniox").new{ api_key = tokend.secret("SONIOX_API_KEY"), ttl = 5 }',
     "unknown option ttl"),
    ('require("tokend.providers.openai").new{ api_key = tokend.env("PLAIN_KEY"), session = { type = "realtime", model = "m" } }',
     "api_key must be a secret"),
    ('require("tokend.providers.deepgram").new{ api_key = tokend.secret("NOT_SET_ANYWHERE") }',
     "the secret NOT_SET_ANYWHERE is not set"),
    ('require("tokend.providers.openai").new{ api_key = tokend.secret("OPENAI_API_KEY"), session = { type = "chat" } }',
     "session.type must be realtime or transcription"),
    ('require("tokend.providers.soniox").new{ api_key = tokend.secret("SONIOX_API_KEY"), expires_in_seconds = 7200 }',
     "expires_in_seconds must be between 1 and 3600"),
    ('require("tokend.providers.deepgram").new{ api_key = tokend.secret("DEEPGRAM_API_KEY"), mode = "key" }',
     "needs project_id"),
    ('require("tokend.providers.livekit").new{ api_key = "k", api_secret = tokend.secret("LIVEKIT_API_SECRET"), '
     'server_url = "wss://x", client_may_set = { "participant_identity" } }', "client_may_set names participant_identity"),
    ('tokend.secret("SHORT_SECRET")', "shorter than 8 bytes"),
]


class BadOptions(TokendTestCase):
    def test_mistakes_stop_the_script_at_load(self):
        env = {**SECRET_ENV, "PLAIN_KEY": "plain-text-key-123", "SHORT_SECRET": "abc"}
        for line, message in BAD_SCRIPTS:
            with self.subTest(message):
                script = self.write("bad.lua", 'local tokend = require "tokend"\n' + line + "\n")
                r = self.run_tokend(["--check", "--script", script], env=env)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn(message, r.stdout + r.stderr)
                self.assertIn("bad.lua:2:", r.stdout + r.stderr, "the error names the script's line")


if __name__ == "__main__":
    unittest.main()
