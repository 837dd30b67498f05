"""Embedding: install into a temporary prefix, then build and run the examples against the
installed library and module, with the stock lua5.4 and a C compiler, as a new user would."""
import os
import shutil
import signal
import subprocess
import unittest

from harness import CANARY_KEY, SRC, TokendTestCase, read_line, request

BUILD = os.environ.get("TOKEND_BUILD_DIR") or os.path.join(SRC, "build")
INSTALLED = [
    "bin/tokend", "include/tokend.h", "lib/libtokend.a", "lib/libtokend.so", "lib/pkgconfig/tokend.pc",
    "lib/lua/5.4/tokend.so", "share/tokend/scripts/routes.lua", "share/tokend/public/index.html",
    "share/tokend/public/capture-worklet.js", "share/tokend/tokend.service", "share/doc/tokend/README.md",
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


if __name__ == "__main__":
    unittest.main()


@unittest.skipIf(SANITIZED, "the plain build runs this test")
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
