"""Route tests as blocks, as OpenResty's Test::Nginx keeps them: one case is one block with
its script snippet, its requests and the answers it expects, read top to bottom. Each block
runs as a subtest against a tokend of its own running the snippet.

    Block("a parameter in the path",
          script='tokend.route("GET", "/hello/:name", function(req) return 200, "hi " .. req.params.name end)',
          exchanges=[Get("/hello/ada", status=200, body="hi ada")])

A snippet starts with `tokend` and `cjson` in scope; FILES (a folder of the test's, with
the files a block gives in `files`) and FAKE_PORT (the token fake's port) are replaced.
"""
import json
import os
import re
import textwrap
import time

from harness import Tokend

PRELUDE = 'local tokend = require "tokend"\nlocal cjson = require "cjson"\n'


class Port:
    """In an expectation: the port of the tokend running the block (or of the fake)."""

    def __init__(self, of="tokend"):
        self.of = of


PORT, FAKE_PORT = Port("tokend"), Port("fake")


def _resolve(value, ports):
    if isinstance(value, Port):
        return ports[value.of]
    if isinstance(value, str):
        return value.replace("{port}", str(ports["tokend"])).replace("{fake_port}", str(ports["fake"]))
    if isinstance(value, dict):
        return {k: _resolve(v, ports) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, ports) for v in value]
    return value


class Get:
    """One request and what its answer must be. Unset expectations are not checked.

    status; body (bytes or str, whole); json (the decoded body, whole); fields (some of the
    decoded body's members: a dict in it is compared member by member too); has (substrings
    of the body); lacks (substrings it must not hold); header (name in lower case -> value,
    None: absent); header_all (name -> every value, in order); log (substrings the log must
    come to hold); log_re (patterns); upstream
    (the query the token fake saw last); verify (a function of the response returning true).
    In expectations, PORT and FAKE_PORT, and "{port}" and "{fake_port}" in strings, are the
    ports of the block's tokend and fake.
    """

    def __init__(self, path, method="GET", headers=None, send=None, status=None, body=None, json=None,
                 fields=None, has=(), lacks=(), header=None, header_all=None, log=(), log_re=(), upstream=None,
                 verify=None):
        self.path, self.method, self.headers, self.send = path, method, headers or {}, send
        self.status, self.body, self.json, self.fields = status, body, json, fields
        self.has, self.lacks, self.expect_headers, self.expect_all = has, lacks, header or {}, header_all or {}
        self.log = [log] if isinstance(log, str) else list(log)
        self.log_re = [log_re] if isinstance(log_re, str) else list(log_re)
        self.upstream, self.verify = upstream, verify

    def _subset(self, case, got, want, where):
        for key, value in want.items():
            case.assertIn(key, got, where)
            if isinstance(value, dict) and isinstance(got[key], dict):
                self._subset(case, got[key], value, f"{where}: {key}")
            else:
                case.assertEqual(got[key], value, f"{where}: {key}")

    def check(self, case, t, fake, label):
        ports = {"tokend": t.port, "fake": fake.port if fake else None}
        r = t.get(self.path, method=self.method, headers=self.headers, body=self.send)
        where = f"{label}: {self.method} {self.path} -> {r!r}"
        if self.status is not None:
            case.assertEqual(r.status, self.status, where)
        if self.body is not None:
            want = _resolve(self.body, ports)
            case.assertEqual(r.body, want.encode() if isinstance(want, str) else want, where)
        if self.json is not None:
            case.assertEqual(r.json(), _resolve(self.json, ports), where)
        if self.fields is not None:
            self._subset(case, r.json(), _resolve(self.fields, ports), where)
        for part in self.has:
            case.assertIn(part.encode() if isinstance(part, str) else part, r.body, where)
        for part in self.lacks:
            case.assertNotIn(part.encode() if isinstance(part, str) else part, r.body, where)
        for name, value in self.expect_headers.items():
            case.assertEqual(r.headers.get(name), _resolve(value, ports), f"{where}: header {name}")
        for name, values in self.expect_all.items():
            case.assertEqual(r.all(name), _resolve(values, ports), f"{where}: every {name}")
        for needle in self.log:
            case.assertIn(needle, t.wait_log(needle), f"{where}: the log")
        for pattern in self.log_re:
            deadline = time.time() + 5
            while not re.search(pattern, t.log) and time.time() < deadline:
                time.sleep(0.02)
            case.assertRegex(t.log, pattern, f"{where}: the log")
        if self.upstream is not None:
            case.assertEqual(fake.stats()["last_query"], self.upstream, f"{where}: the upstream's query")
        if self.verify is not None:
            case.assertTrue(self.verify(r), f"{where}: verify")
        return r


class Block:
    """A case: a script snippet, the requests made to it in order, and options of the
    tokend running it (env: settings; files: name -> text under FILES)."""

    def __init__(self, name, script, exchanges, env=None, files=None, fake=True, **tokend_options):
        self.name, self.script, self.exchanges = name, textwrap.dedent(script), exchanges
        self.env, self.files, self.fake, self.tokend_options = env or {}, files or {}, fake, tokend_options


def run_blocks(case, blocks):
    """Runs each block as a subtest of case (a TokendTestCase), with a token fake shared by
    the blocks that want one."""
    fake = case.fake() if any(b.fake for b in blocks) else None
    for i, block in enumerate(blocks):
        with case.subTest(block.name):
            files = os.path.join(case.workdir, f"files-{i}")
            for name, text in block.files.items():
                case.write(os.path.join(f"files-{i}", name), text)
            source = PRELUDE + block.script.replace("FILES", json.dumps(files))
            if fake:
                source = source.replace("FAKE_PORT", str(fake.port))
            script = case.write(f"block-{i}.lua", source)
            t = Tokend(case.workdir, fake=fake if block.fake else None, script=script, env=block.env,
                       **block.tokend_options)
            try:
                for exchange in block.exchanges:
                    exchange.check(case, t, fake, block.name)
            except AssertionError:
                print(f"--- {block.name}: tokend's log\n{t.log}")
                raise
            finally:
                t.stop()
    return fake
