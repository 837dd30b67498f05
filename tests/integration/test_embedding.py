"""Embedding: install into a temporary prefix, then build and run the examples against the
installed library and module, with the stock lua5.4 and a C compiler, as a new user would."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from harness import CANARY_KEY, SRC, TokendTestCase, read_line, request

BUILD = os.environ.get("TOKEND_BUILD_DIR") or os.path.join(SRC, "build")
INSTALLED = [
    "bin/tokend", "include/tokend.h", "lib/libtokend.a", "lib/libtokend.so", "lib/pkgconfig/tokend.pc",
    "lib/lua/5.4/tokend.so", "share/tokend/scripts/routes.lua", "share/tokend/public/index.html",
    "share/tokend/public/capture-worklet.js", "share/tokend/haproxy.cfg", "share/doc/tokend/README.md",
    "share/doc/tokend/docs/embedding.md", "share/doc/tokend/examples/embed.c", "share/doc/tokend/examples/luv.lua",
    "share/doc/tokend/examples/cqueues.lua", "share/doc/tokend/examples/policies/jwt.lua", "share/man/man8/tokend.8",
    "lib/systemd/system/tokend.service", "lib/systemd/system/tokend@.service", "lib/pkgconfig/tokend-static.pc",
]


SANITIZED = bool(os.environ.get("ASAN_OPTIONS"))


@unittest.skipIf(SANITIZED, "a sanitizer build cannot be loaded by the stock interpreter or linked "
                            "without its runtime; the plain build runs these tests")
class Embedding(TokendTestCase):
    @classmethod
    def setUpClass(cls):
        cls.prefix = os.path.join(BUILD, "test-install")
        shutil.rmtree(cls.prefix, ignore_errors=True)
        subprocess.run(["cmake", "--install", BUILD, "--prefix", cls.prefix], check=True, capture_output=True)

    def env(self, fake):
        e = {k: v for k, v in os.environ.items() if not k.startswith(("ASSEMBLYAI_", "TOKEND_"))}
        e.update(ASSEMBLYAI_API_KEY=CANARY_KEY, ASSEMBLYAI_STREAMING_URL=fake.url,
                 PKG_CONFIG_PATH=os.path.join(self.prefix, "lib", "pkgconfig"),
                 LD_LIBRARY_PATH=os.path.join(self.prefix, "lib"),
                 LUA_CPATH=os.path.join(self.prefix, "lib", "lua", "5.4", "?.so") + ";;")
        return e

    def start(self, cmd, env, ready):
        p = subprocess.Popen(cmd, env=env, cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: (p.poll() is None and p.kill(), p.wait()))
        line = ""
        while ready not in (line or ""):
            line = read_line(p, 20)
            if line is None:
                self.fail(f"{cmd[0]} did not start: {p.stderr.read().decode()}")
        return p, int(line.rsplit(":", 1)[1])

    def test_install_layout(self):
        for rel in INSTALLED:
            self.assertTrue(os.path.exists(os.path.join(self.prefix, rel)), rel)
        env = {**os.environ, "PKG_CONFIG_PATH": os.path.join(self.prefix, "lib", "pkgconfig")}
        cflags = subprocess.run(["pkg-config", "--cflags", "tokend"], env=env, capture_output=True, text=True).stdout
        self.assertIn(f"-I{self.prefix}/include", os.path.normpath(cflags.split()[0][2:]).join(["-I", ""]))

    def test_c_program_embeds_the_server_with_a_c_route(self):
        fake = self.fake()
        env = self.env(fake)
        exe = os.path.join(self.workdir, "embed")
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "tokend"], env=env, capture_output=True,
                               text=True, check=True).stdout.split()
        subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", os.path.join(SRC, "examples", "embed.c"),
                        *flags, "-o", exe], env=env, check=True)
        out = subprocess.run([exe, "--mint"], env=env, capture_output=True, text=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertRegex(out.stdout, r"^token of \d+ characters, valid for 60 s$")
        share = os.path.join(self.prefix, "share", "tokend")
        p, port = self.start([exe, "0", os.path.join(share, "scripts", "routes.lua"), os.path.join(share, "public")],
                             env, "embed listening on")
        r = request(port, "/c/hello/ada")
        self.assertEqual((r.status, r.json()), (200, {"hello": "ada", "from": "C"}))
        self.assertEqual(r.headers["cache-control"], "no-store")
        self.assertEqual(request(port, "/token").status, 200, "the installed default script serves tokens")
        self.assertEqual(request(port, "/").status, 200, "and the installed page")
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(10), 0)
        bad = subprocess.run([exe, "--mint"], env={**env, "ASSEMBLYAI_API_KEY": "wrong"}, capture_output=True, text=True)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("upstream status 401", bad.stderr)

    def test_lua_application_with_the_stock_interpreter(self):
        fake = self.fake()
        env = self.env(fake)
        p, port = self.start(["lua5.4", os.path.join(SRC, "examples", "app.lua"), "0"], env, "app listening on")
        self.assertEqual(fake.stats()["tokens"], 1, "the app minted one token before serving")
        j = request(port, "/app/status").json()
        self.assertEqual(j["client"], "127.0.0.1")
        r = request(port, "/app/token")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["websocket_url"], f"ws://127.0.0.1:{fake.port}/v3/ws")
        self.assertEqual(fake.stats()["last_query"], {"expires_in_seconds": "60", "max_session_duration_seconds": "600"})
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
        self.assertEqual(p.returncode, 0, err)
        self.assertIn("app stopped", out.decode())
        self.assertNotIn(CANARY_KEY, out.decode() + err.decode())

    def test_module_api_from_lua(self):
        fake = self.fake(fault="401")
        env = self.env(fake)
        code = ('local tokend = require "tokend"\n'
                'local t, err, status, failure = tokend.generate_temp_token(10)\n'
                'print(t, status, failure.kind, type(err))\n'
                'print(pcall(tokend.generate_temp_token, 0))\n'
                'print(tokend.config.api_key, tokend.config.api_key_configured)\n'
                'local co = coroutine.wrap(function() return (select(3, tokend.generate_temp_token(10))) end)\n'
                'print("in an application coroutine", co())\n')
        out = subprocess.run(["lua5.4", "-e", code], env=env, capture_output=True, text=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.splitlines()
        self.assertEqual(lines[0], "nil\t401\tunauthorized\tstring")
        self.assertIn("between 1 and 600", lines[1])
        self.assertEqual(lines[2], "nil\ttrue")
        self.assertEqual(lines[3], "in an application coroutine\t401", "blocks there too, no yield, no crash")


def read(path):
    with open(path) as f:
        return f.read()


def install_into(folder):
    """cmake --install into folder, readable by every user (the service test runs as nobody)."""
    os.chmod(folder, 0o755)
    subprocess.run(["cmake", "--install", BUILD, "--prefix", folder], check=True, capture_output=True)
    return folder


@unittest.skipIf(SANITIZED, "the plain build runs these tests")
class AsInstalled(TokendTestCase):
    """The installed binary, service unit and library, used as their documentation says."""

    @classmethod
    def setUpClass(cls):
        cls.prefix = install_into(tempfile.mkdtemp(prefix="tokend-prefix-", dir="/tmp"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.prefix, ignore_errors=True)

    def clean_env(self, **extra):
        e = {k: v for k, v in os.environ.items()
             if not k.startswith(("ASSEMBLYAI_", "TOKEND_", "LD_LIBRARY_PATH", "LUA_CPATH", "PKG_CONFIG"))}
        e.update(extra)
        return e

    def test_the_binary_outside_the_source_folder_uses_the_installed_script_and_page(self):
        fake = self.fake()
        p = subprocess.Popen([os.path.join(self.prefix, "bin", "tokend"), "--port", "0"], cwd=self.workdir,
                             env=self.clean_env(ASSEMBLYAI_API_KEY=CANARY_KEY, ASSEMBLYAI_STREAMING_URL=fake.url),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: (p.poll() is None and p.kill(), p.wait()))
        line = read_line(p, 15)
        self.assertIsNotNone(line, p.stderr.read1().decode() if p.poll() is not None else "no start line")
        port = int(line.rsplit(":", 1)[1])
        self.assertEqual(request(port, "/token").status, 200)
        self.assertIn(b"<title>", request(port, "/").body)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=15)
        self.assertIn(f"using the installed {self.prefix}/bin/../share/tokend/scripts/routes.lua", err.decode())
        self.assertIn("serving the installed", err.decode())

    def test_the_systemd_unit_as_systemd_runs_it(self):
        units = os.path.join(self.prefix, "lib", "systemd", "system")
        unit = read(os.path.join(units, "tokend.service"))
        exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1).split()
        self.assertEqual(exec_start[0], os.path.join(self.prefix, "bin", "tokend"), "the prefix's paths are filled in")
        self.assertIn("Type=notify\n", unit)
        self.assertIn("LoadCredential=tokend.env:/etc/tokend/tokend.env\n", unit)
        if shutil.which("systemd-analyze"):
            instance = self.write("tokend@8123.service", read(os.path.join(units, "tokend@.service")))
            for path in (os.path.join(units, "tokend.service"), instance):
                v = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True)
                self.assertEqual(v.returncode, 0, v.stderr)
        if os.getuid() != 0:
            self.skipTest("running as another user needs root")
        # What systemd does for the unit: a copy of the root-only settings file in a folder
        # only the service's (dynamic) user reads, $CREDENTIALS_DIRECTORY naming it, that
        # user (here nobody), the working folder, and a socket for sd_notify.
        fake = self.fake()
        creds = tempfile.mkdtemp(prefix="creds-", dir="/tmp")
        self.addCleanup(shutil.rmtree, creds, True)
        with open(os.path.join(creds, "tokend.env"), "w") as f:
            f.write(f"ASSEMBLYAI_API_KEY={CANARY_KEY}\nASSEMBLYAI_STREAMING_URL={fake.url}\nPORT=0\n")
        os.chmod(os.path.join(creds, "tokend.env"), 0o400)
        os.chown(os.path.join(creds, "tokend.env"), 65534, 65534)
        os.chown(creds, 65534, 65534)
        os.chmod(creds, 0o500)
        notify_dir = tempfile.mkdtemp(prefix="notify-", dir="/tmp")
        self.addCleanup(shutil.rmtree, notify_dir, True)
        os.chmod(notify_dir, 0o777)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(notify.close)
        notify.bind(os.path.join(notify_dir, "notify"))
        os.chmod(os.path.join(notify_dir, "notify"), 0o777)
        notify.settimeout(15)
        args = [a.replace("${CREDENTIALS_DIRECTORY}", creds) for a in exec_start]
        cwd = re.search(r"^WorkingDirectory=(.*)$", unit, re.M).group(1)
        p = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *args], cwd=cwd,
                             env=self.clean_env(CREDENTIALS_DIRECTORY=creds,
                                                NOTIFY_SOCKET=os.path.join(notify_dir, "notify")),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: (p.poll() is None and p.kill(), p.wait()))
        line = read_line(p, 15)
        self.assertIsNotNone(line, p.stderr.read1().decode() if p.poll() is not None else "no start line")
        ready = notify.recv(4096).decode()
        self.assertTrue(ready.startswith("READY=1\n"), ready)
        port = int(line.rsplit(":", 1)[1])
        health = request(port, "/healthz").json()
        self.assertTrue(health["api_key_configured"], "the key came from the credential")
        self.assertEqual(request(port, "/token").status, 200)
        p.send_signal(signal.SIGTERM)
        self.assertEqual(notify.recv(4096).decode(), "STOPPING=1")
        out, err = p.communicate(timeout=15)
        self.assertEqual(p.returncode, 0, err.decode())
        self.assertNotIn(CANARY_KEY, out.decode() + err.decode())
        # The same settings file root-only and read directly, as the old unit did: refused.
        denied = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", args[0],
                                 "--env-file", "/etc/shadow", "--check"], capture_output=True, text=True)
        self.assertNotEqual(denied.returncode, 0)
        self.assertIn("Permission denied", denied.stderr)

    def test_a_c_program_linked_as_the_readme_says(self):
        pc = os.path.join(self.prefix, "lib", "pkgconfig")
        env = self.clean_env(PKG_CONFIG_PATH=pc)
        program = self.write("p.c", '#include <stdio.h>\n#include "tokend.h"\n'
                                    'int main(void) { tokend_config c; tokend_config_init(&c); '
                                    'printf("%d\\n", c.port); return 0; }\n')

        def pkg(*args):
            r = subprocess.run(["pkg-config", *args], env=env, capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            return r.stdout.split()

        libdir = pkg("--variable=libdir", "tokend")[0]
        ways = {
            "shared, with the library's folder as rpath": pkg("--cflags", "--libs", "tokend") + [f"-Wl,-rpath,{libdir}"],
            "static libtokend": pkg("--cflags", "--libs", "tokend-static"),
            "pkg-config --static": pkg("--cflags", "--static", "--libs", "tokend") + [f"-Wl,-rpath,{libdir}"],
        }
        for way, flags in ways.items():
            with self.subTest(way=way):
                exe = os.path.join(self.workdir, re.sub(r"\W+", "-", way))
                cc = subprocess.run(["cc", "-std=c11", program, *flags, "-o", exe], env=env, capture_output=True,
                                    text=True)
                self.assertEqual(cc.returncode, 0, cc.stderr)
                out = subprocess.run([exe], env=env, capture_output=True, text=True)
                self.assertEqual((out.returncode, out.stdout), (0, "8000\n"), out.stderr)
        # Without an rpath (nor ldconfig, nor LD_LIBRARY_PATH) the loader cannot find it: the
        # docs/embedding.md says which line to add.
        exe = os.path.join(self.workdir, "plain")
        subprocess.run(["cc", "-std=c11", program, *pkg("--cflags", "--libs", "tokend"), "-o", exe], env=env, check=True)
        out = subprocess.run([exe], env=env, capture_output=True, text=True)
        self.assertIn("libtokend.so.0: cannot open shared object file", out.stderr)
        out = subprocess.run([exe], env={**env, "LD_LIBRARY_PATH": libdir}, capture_output=True, text=True)
        self.assertEqual(out.stdout, "8000\n")


@unittest.skipIf(SANITIZED, "the stock interpreter cannot load a sanitizer build")
class ModuleMode(TokendTestCase):
    def run_lua(self, code, **env):
        prefix = os.path.join(BUILD, "test-install")
        if not os.path.exists(prefix):
            subprocess.run(["cmake", "--install", BUILD, "--prefix", prefix], check=True, capture_output=True)
        e = {k: v for k, v in os.environ.items() if not k.startswith(("ASSEMBLYAI_", "TOKEND_"))}
        e.update(LUA_CPATH=os.path.join(prefix, "lib", "lua", "5.4", "?.so"), **env)
        return subprocess.run(["lua5.4", "-e", code], env=e, capture_output=True, text=True, timeout=30)

    def test_the_key_leaves_the_environment_unless_kept(self):
        code = ('local before = os.getenv("ASSEMBLYAI_API_KEY") ~= nil\n'
                'local tokend = require "tokend"\n'
                'local f = io.open("/proc/self/environ", "rb"); local block = f:read("a"); f:close()\n'
                'print(before, os.getenv("ASSEMBLYAI_API_KEY") ~= nil, block:find("' + CANARY_KEY + '", 1, true) ~= nil,'
                ' tokend.config.api_key_configured, os.getenv("OTHER"))\n')
        out = self.run_lua(code, ASSEMBLYAI_API_KEY=CANARY_KEY, OTHER="kept")
        self.assertEqual(out.stdout.strip(), "true\tfalse\tfalse\ttrue\tkept", out.stderr)
        out = self.run_lua(code, ASSEMBLYAI_API_KEY=CANARY_KEY, OTHER="kept", TOKEND_KEEP_KEY_IN_ENV="1")
        self.assertEqual(out.stdout.strip(), "true\ttrue\ttrue\ttrue\tkept", out.stderr)

    def test_every_setting_is_an_option_of_server_by_the_documented_name(self):
        from harness import BIN
        help_text = subprocess.run([BIN, "--help"], capture_output=True, text=True, check=True).stdout
        envs = re.findall(r"^  ([A-Z][A-Z0-9_]+) ", help_text.split("Settings from the environment", 1)[1], re.M)
        flags = re.findall(r"^  --([a-z-]+)", help_text, re.M)
        names = {re.sub(r"^(TOKEND_|ASSEMBLYAI_|CURL_)", "", e).lower() for e in envs if e != "ASSEMBLYAI_API_KEY"}
        names |= {f.replace("-", "_") for f in flags if f not in ("check", "version", "help")}
        code = ('local tokend = require "tokend"\n'
                'print(select(2, pcall(tokend.server, { api_key = "x" })))\n'
                'for name in os.getenv("NAMES"):gmatch("%S+") do\n'
                '  local ok, err = pcall(tokend.server, { [name] = "not-a-value" })\n'
                '  if not ok and err:find("unknown option") then print("unknown", name) end\n'
                'end\n')
        e = {k: v for k, v in os.environ.items() if not k.startswith(("ASSEMBLYAI_", "TOKEND_"))}
        e.update(LUA_CPATH=os.path.join(BUILD, "?.so"), NAMES=" ".join(sorted(names)))
        out = subprocess.run(["lua5.4", "-e", code], env=e, capture_output=True, text=True, timeout=30)
        self.assertIn("unknown option api_key", out.stdout.splitlines()[0], "the key never passes through Lua")
        self.assertEqual(out.stdout.splitlines()[1:], [], out.stderr)

    def test_a_running_server_reports_its_real_host_and_port_and_takes_every_setting(self):
        code = ('local tokend = require "tokend"\n'
                'print("before", tokend.config.host, tokend.config.port)\n'
                'tokend.route("GET", "/where", function(req)\n'
                '  return 200, { host = tokend.config.host, port = tokend.config.port, client = req.client }\n'
                'end)\n'
                'local s = assert(tokend.server{ port = 0, host = "127.0.0.1", trusted_proxies = "127.0.0.1",\n'
                '                                log_format = "json", max_query_args = 2 })\n'
                'print("port", s:port()); io.stdout:flush()\n'
                'local t = {}\n'
                'for k, v in pairs(tokend.config) do t[k] = v end\n'
                'print("pairs", t.port == s:port())\n'
                'assert(s:run())\n')
        e = {k: v for k, v in os.environ.items() if not k.startswith(("ASSEMBLYAI_", "TOKEND_"))}
        e["LUA_CPATH"] = os.path.join(BUILD, "?.so")
        p = subprocess.Popen(["lua5.4", "-e", code], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: (p.poll() is None and p.kill(), p.wait()))
        self.assertEqual(read_line(p, 10), "before\t\t0")
        port = int(read_line(p, 10).split("\t")[1])
        self.assertEqual(read_line(p, 10), "pairs\ttrue")
        r = request(port, "/where", headers={"X-Forwarded-For": "203.0.113.9"})
        self.assertEqual(r.json(), {"host": "127.0.0.1", "port": port, "client": "203.0.113.9"})
        self.assertEqual(request(port, "/where?a=1&b=2&c=3").status, 400, "max_query_args applies")
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=10)
        access = [json.loads(line) for line in err.decode().splitlines() if '"access"' in line]
        self.assertTrue(access, "log_format = json applies")

    def test_the_default_script_and_page_in_a_lua_application(self):
        # A new user's first try: the shipped script, whose last line serves
        # tokend.config.public, which is the server's while the script loads.
        fake = self.fake()
        app = self.write("app.lua", 'local tokend = require "tokend"\n'
                         'local s = assert(tokend.server{ port = 0, script = arg[1], public = arg[2] })\n'
                         'print("port", s:port()); io.stdout:flush()\n'
                         'assert(s:run())\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSEMBLYAI_", "TOKEND_"))}
        env.update(LUA_CPATH=os.path.join(BUILD, "?.so"), ASSEMBLYAI_API_KEY=CANARY_KEY,
                   ASSEMBLYAI_STREAMING_URL=fake.url)
        p = subprocess.Popen(["lua5.4", app, os.path.join(SRC, "scripts", "routes.lua"), os.path.join(SRC, "public")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: (p.poll() is None and p.kill(), p.wait()))
        line = read_line(p, 15)
        if line is None:
            p.kill()
            self.fail(f"the application did not start: {p.communicate()[1].decode()}")
        port = int(line.split("\t")[1])
        self.assertEqual(request(port, "/healthz").json()["status"], "ok")
        self.assertIn(b"<title>", request(port, "/").body)
        r = request(port, "/token")
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.json()["websocket_url"].startswith(fake.url.replace("http", "ws")))
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=10)

    def test_luv_and_cqueues_applications_drive_tokend_and_mint_without_blocking(self):
        fake = self.fake(latency_ms=500)
        for example, module in (("luv.lua", "luv"), ("cqueues.lua", "cqueues")):
            with self.subTest(example=example):
                env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSEMBLYAI_", "TOKEND_"))}
                env.update(LUA_CPATH=os.path.join(BUILD, "?.so") + ";;", ASSEMBLYAI_API_KEY=CANARY_KEY,
                           ASSEMBLYAI_STREAMING_URL=fake.url)
                if subprocess.run(["lua5.4", "-e", f'require "{module}"'], env=env).returncode != 0:
                    self.fail(f"lua-{module} is not installed (make test installs it)")
                p = subprocess.Popen(["lua5.4", os.path.join(SRC, "examples", example), "0"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                self.addCleanup(lambda p=p: (p.poll() is None and p.kill(), p.wait()))
                line = read_line(p, 15)
                self.assertIsNotNone(line, example)
                port = int(line.rsplit(":", 1)[1])
                self.assertEqual(request(port, "/hello").status, 200)
                minted = read_line(p, 15)
                self.assertRegex(minted or "", r"^minted in the background \(60 s\), the application ticked (\d+) times")
                self.assertGreater(int(re.search(r"ticked (\d+)", minted).group(1)), 0,
                                   "the application's loop ran while the token was minted")
                p.send_signal(signal.SIGTERM)
                _, err = p.communicate(timeout=10)
                self.assertEqual(p.returncode, 0, err.decode())
                self.assertNotIn(CANARY_KEY, err.decode())


class Rockspec(TokendTestCase):
    def test_luarocks_make_builds_the_module(self):
        luarocks = shutil.which("luarocks")
        self.assertIsNotNone(luarocks, "luarocks is missing: make test installs it")
        src = os.path.join(self.workdir, "src")
        shutil.copytree(SRC, src, ignore=shutil.ignore_patterns("build*", "node_modules", ".git", "test-tmp"))
        tree = os.path.join(self.workdir, "rocks")
        rockspec = [f for f in os.listdir(src) if f.endswith(".rockspec")][0]
        p = subprocess.run([luarocks, "--lua-version=5.4", "--tree", tree, "make", rockspec], cwd=src,
                           capture_output=True, text=True, timeout=600)
        self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr[-2000:])
        env = {**os.environ, "LUA_CPATH": os.path.join(tree, "lib", "lua", "5.4", "?.so")}
        out = subprocess.run(["lua5.4", "-e", 'print(require("tokend").version)'], env=env,
                             capture_output=True, text=True)
        self.assertEqual(out.stdout.strip(), "0.1.0", out.stderr)


@unittest.skipIf(SANITIZED, "the plain build runs this test")
class Serve(TokendTestCase):
    def test_serve_runs_until_sigterm(self):
        prefix = os.path.join(BUILD, "test-install")
        if not os.path.exists(prefix):
            subprocess.run(["cmake", "--install", BUILD, "--prefix", prefix], check=True, capture_output=True)
        self.write("site/index.html", "served by tokend.serve")
        code = ('local tokend = require "tokend"\n'
                'tokend.route("GET", "/who", function() return 200, "lua app" end)\n'
                'io.stdout:write("ready\\n"); io.stdout:flush()\n'
                'print(tokend.serve{ port = tonumber(arg[1]), public = arg[2] })\n')
        script = self.write("serve.lua", code)
        from harness import free_port
        port = free_port()
        env = {**os.environ, "LUA_CPATH": os.path.join(prefix, "lib", "lua", "5.4", "?.so")}
        p = subprocess.Popen(["lua5.4", script, str(port), os.path.join(self.workdir, "site")], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: (p.poll() is None and p.kill(), p.wait()))
        self.assertEqual(read_line(p, 10), "ready")
        import time
        for _ in range(50):
            try:
                r = request(port, "/who")
                break
            except OSError:
                time.sleep(0.1)
        self.assertEqual(r.body, b"lua app")
        self.assertEqual(request(port, "/").body, b"served by tokend.serve")
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual(out.decode().strip(), "true")
