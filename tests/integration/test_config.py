"""Flags, environment and .env: a table of command lines and what tokend does with them."""
import json
import os
import re
import unittest

from harness import CANARY_KEY, SRC, TokendTestCase, free_port

SCRIPT = os.path.join(SRC, "scripts", "routes.lua")
PUBLIC = os.path.join(SRC, "public")

# arguments, extra environment, exit code, text expected on stderr (or stdout for 0)
RUNS = [
    (["--version"], {}, 0, "tokend 0.1.0"),
    (["--help"], {}, 0, "--env-file"),
    (["--bogus"], {}, 2, "unknown option: --bogus"),
    (["--port"], {}, 2, "option needs a value"),
    (["extra"], {}, 2, "unexpected argument"),
    (["--port", "http"], {}, 2, "--port must be an integer between 0 and 65535"),
    (["--port", "70000"], {}, 2, "--port must be an integer between 0 and 65535"),
    (["--workers", "-1"], {}, 2, "--workers must be an integer"),
    ([], {"PORT": "eighty"}, 2, "PORT must be an integer"),
    (["--log-level", "loud"], {}, 2, "log level must be debug, info, warn or error"),
    (["--log-format", "xml"], {}, 2, "log format must be text or json"),
    (["--env-file", "/nonexistent/.env"], {}, 2, "/nonexistent/.env"),
    (["--check", "--script", SCRIPT, "--public", os.path.join(SRC, "public")], {}, 0, "routes.lua: ok"),
    (["--check", "--script", "missing.lua"], {}, 1, "cannot open missing.lua"),
    (["--script", "missing.lua", "--port", "0"], {}, 1, "cannot open missing.lua"),
    (["--public", "/nonexistent-dir", "--port", "0", "--script", SCRIPT], {}, 1, "/nonexistent-dir"),
    (["--port", "0", "--script", SCRIPT], {"ASSEMBLYAI_STREAMING_URL": "ftp://x"}, 2, "must start with https:// or http://"),
    (["--port", "0", "--script", SCRIPT], {"CURL_CA_BUNDLE": "/nonexistent.pem"}, 1, "/nonexistent.pem"),
    (["--port", "0"], {"TOKEND_TRUSTED_PROXIES": "10.0.0.0/8, proxy.local"}, 2, "TOKEND_TRUSTED_PROXIES: trusted proxy"),
    (["--port", "0"], {"TOKEND_ALLOWED_HOSTS": "app.example.com, bad/host"}, 2, "TOKEND_ALLOWED_HOSTS: allowed host"),
    (["--port", "0", "--host", "not a host!", "--script", SCRIPT], {}, 1, "cannot resolve host"),
    # Numbers are digits: no sign, no spaces.
    (["--port", "+80"], {}, 2, "--port must be an integer between 0 and 65535"),
    ([], {"PORT": " 80"}, 2, "PORT must be an integer between 0 and 65535"),
    ([], {"TOKEND_WORKERS": "2 "}, 2, "TOKEND_WORKERS must be an integer"),
    # The streaming URL is checked at start, as libcurl will read it: never a 502 later. A
    # malformed setting exits 2, like every bad value; one that only a start can refuse, 1.
    (["--port", "0", "--script", SCRIPT], {"ASSEMBLYAI_STREAMING_URL": "http://127.0.0.1:abc"}, 2, "has a bad port"),
    (["--port", "0", "--script", SCRIPT], {"ASSEMBLYAI_STREAMING_URL": "http://127.0.0.1:99999"}, 2, "has a bad port"),
    (["--port", "0", "--script", SCRIPT], {"ASSEMBLYAI_STREAMING_URL": "http://127.0.0.1:"}, 2, "has a bad port"),
    (["--port", "0", "--script", SCRIPT], {"ASSEMBLYAI_STREAMING_URL": "http://127.0.0.1:/v"}, 2, "has a bad port"),
    (["--port", "0", "--script", SCRIPT], {"ASSEMBLYAI_STREAMING_URL": "http://127.0.0.1:+80"}, 2, "has a bad port"),
    (["--port", "0", "--script", SCRIPT], {"ASSEMBLYAI_STREAMING_URL": "http://[zz]:80"}, 2, "Bad IPv6 address"),
    (["--port", "0", "--script", SCRIPT], {"ASSEMBLYAI_STREAMING_URL": "http://[::1"}, 2, "has a bad host"),
    (["--check", "--script", SCRIPT, "--public", PUBLIC], {"ASSEMBLYAI_STREAMING_URL": "http://[::1]:8080/prefix"}, 0, "routes.lua: ok"),
    (["--check", "--script", SCRIPT, "--public", PUBLIC], {"ASSEMBLYAI_STREAMING_URL": "https://streaming.eu.assemblyai.com"}, 0, "ok"),
]


class CommandLine(TokendTestCase):
    def test_runs(self):
        for args, env, code, text in RUNS:
            with self.subTest(args=args, env=env):
                p = self.run_tokend(args, env)
                self.assertEqual(p.returncode, code, p.stderr)
                self.assertIn(text, p.stdout if code == 0 else p.stderr)

    def test_check_reports_file_and_line(self):
        for text, where in [('local x = \nreturn (', ":2:"), ('local tokend = require "tokend"\n\nerror("at load")', ":3: at load"),
                            ('require "tokend".route("GET", "/a//b", print)', ":1: tokend.route: route path")]:
            script = self.write("bad.lua", text)
            p = self.run_tokend(["--check", "--script", script])
            self.assertEqual(p.returncode, 1)
            self.assertIn("bad.lua" + where, p.stderr)
            p = self.run_tokend(["--script", script, "--port", "0"])
            self.assertEqual(p.returncode, 1, "the server refuses to start with a broken script")
            self.assertIn("bad.lua" + where, p.stderr)

    def test_bytecode_scripts_are_refused(self):
        import subprocess
        src = self.write("s.lua", "return 1")
        out = os.path.join(self.workdir, "s.luac")
        if subprocess.run(["luac5.4", "-o", out, src]).returncode != 0:
            self.skipTest("luac5.4 not installed")
        p = self.run_tokend(["--check", "--script", out])
        self.assertEqual(p.returncode, 1)
        self.assertIn("binary chunk", p.stderr)


class Settings(TokendTestCase):
    def test_env_file_in_working_folder(self):
        fake = self.fake()
        self.write(".env", f"# settings\nASSEMBLYAI_API_KEY={CANARY_KEY}\nASSEMBLYAI_STREAMING_URL={fake.url}\n")
        t = self.tokend(key=None)
        self.assertEqual(t.get("/token").status, 200)

    def test_real_environment_wins_over_env_file(self):
        port = free_port()
        self.write(".env", f"PORT={free_port()}\nASSEMBLYAI_API_KEY=wrong-key\n")
        fake = self.fake()
        t = self.tokend(fake=fake, port=None, env={"PORT": str(port)})
        self.assertEqual(t.port, port)
        self.assertEqual(t.get("/token").status, 200, "the environment's key, not .env's")

    def test_flag_wins_over_environment(self):
        port = free_port()
        t = self.tokend(key=None, port=port, env={"PORT": "1"})
        self.assertEqual(t.port, port)

    def test_explicit_env_file_and_unknown_names(self):
        fake = self.fake()
        path = self.write("conf/prod.env", f"ASSEMBLYAI_API_KEY='{CANARY_KEY}'\nASSEMBLYAI_STREAMING_URL={fake.url}\nASSEMBLYAI_APIKEY=typo\n")
        t = self.tokend(key=None, args=["--env-file", path])
        self.assertEqual(t.get("/token").status, 200)
        self.assertIn("sets ASSEMBLYAI_APIKEY, which tokend does not use", t.log)

    def test_an_env_file_that_is_no_file_is_named(self):
        for make, said in [(lambda path: os.mkdir(path), "a folder, not a settings file"),
                           (lambda path: os.symlink("/nonexistent/settings.env", path), "a link to nothing")]:
            for args in ([], ["--env-file", "prod.env"]):
                with self.subTest(said=said, args=args):
                    path = os.path.join(self.workdir, args[1] if args else ".env")
                    make(path)
                    p = self.run_tokend(["--port", "0", *args])
                    self.assertEqual(p.returncode, 2, p.stderr)
                    self.assertIn(f"{args[1] if args else '.env'}: {said}", p.stderr)
                    os.rmdir(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)

    def test_a_settings_file_every_user_may_read_is_warned_about(self):
        path = self.write("conf/tokend.env", "TOKEND_LOG_LEVEL=info\n")
        source = self.write("source.env", "")        # under systemd: the file the credential copies
        warning = "is readable by every user (mode 0644) and may hold the API key: chmod 600 it"
        # the env file's mode, the source's (None: no source named), the file warned about
        for mode, source_mode, warned in [(0o644, None, path), (0o640, None, None), (0o600, None, None),
                                          (0o600, 0o644, source), (0o600, 0o640, None)]:
            with self.subTest(mode=oct(mode), source=source_mode):
                os.chmod(path, mode)
                env = {}
                if source_mode is not None:
                    os.chmod(source, source_mode)
                    env["TOKEND_ENV_FILE_SOURCE"] = source
                p = self.run_tokend(["--check", "--script", SCRIPT, "--public", PUBLIC, "--env-file", path], env)
                self.assertEqual(p.returncode, 0, p.stderr)
                if warned:
                    self.assertIn(f"{warned} {warning}", p.stderr)
                else:
                    self.assertNotIn("readable by every user", p.stderr)
        os.chmod(source, 0o644)     # a server warns once at start, in its log format, and serves
        t = self.tokend(key=None, args=["--env-file", path, "--log-format", "json"],
                        env={"TOKEND_ENV_FILE_SOURCE": source})
        self.assertEqual(t.get("/healthz").status, 200)
        lines = [l for l in t.log.splitlines() if "readable by every user" in l]
        self.assertEqual(len(lines), 1, t.log)
        self.assertEqual(json.loads(lines[0])["level"], "warn")

    def test_malformed_env_file(self):
        self.write(".env", "GOOD=1\nthis is not a setting\n")
        p = self.run_tokend(["--port", "0"])
        self.assertEqual(p.returncode, 2)
        self.assertIn(".env: line 2: expected NAME=value", p.stderr)

    def test_default_host_and_port_printed(self):
        t = self.tokend(key=None, port=None, env={"PORT": str(free_port())})
        self.assertRegex(t.stdout_lines[0], r"^tokend listening on http://127\.0\.0\.1:\d+$")

    def test_port_in_use(self):
        first = self.tokend(key=None, workers=2)
        p = self.run_tokend(["--port", str(first.port), "--script", SCRIPT])
        self.assertEqual(p.returncode, 1)
        self.assertIn("Address already in use", p.stderr)

    def test_json_logs(self):
        import json
        t = self.tokend(key=None, args=["--log-format", "json"])
        t.get("/")
        t.stop()
        # Every line tokend writes is JSON (a wrapper such as valgrind may add its own "--pid--" lines).
        lines = [json.loads(l) for l in t.log.splitlines() if l.strip() and not re.match(r"^(--|==)\d+(--|==)", l)]
        access = [l for l in lines if l.get("type") == "access"]
        self.assertEqual(access[0]["path"], "/")
        self.assertEqual(access[0]["status"], 200)

    def test_query_values_are_not_logged(self):
        t = self.tokend(key=None)
        t.get("/token?secret_value=hunter2")
        self.assertNotIn("hunter2", t.log)
        self.assertIn("GET /token 503", t.wait_log("GET /token 503"))


if __name__ == "__main__":
    unittest.main()
