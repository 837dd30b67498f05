"""The shape of the code: what a reader of src/ and a user of libtokend can rely on.

- no file of src/ includes a file that includes it back (directly or through others);
- a module split over several files (x.c, xcheck.c, ...) keeps its insides in a private header,
  xint.h, which only its own files include;
- libmicrohttpd is used only by the HTTP front (src/http*.c and its private header);
- no file of src/ is longer than 800 lines;
- libtokend.a and libtokend.so export only tokend_* symbols, so a program may define its
  own log_msg or url_decode_path and link against either;
- the settings table (tokend --help) , .env.example, the README and the man page (tokend.8,
  generated from the table) list the same settings, the page with --help's words;
- the Debian package, the rockspec and the code carry the project's version, and the
  Makefile installs what debian/control needs to build the package;
- every function a header of src/ declares is used outside its own file (else it belongs
  in that file, static).
"""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

SRC = os.environ.get("TOKEND_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("TOKEND_BUILD_DIR") or os.path.join(SRC, "build")
BIN = os.environ.get("TOKEND_BIN") or os.path.join(BUILD, "tokend")
SANITIZED = bool(os.environ.get("ASAN_OPTIONS"))


def private_owner(stem, folder):
    """The module whose private header stem.h is (xint.h beside x.c: x), or None."""
    m = re.fullmatch(r"(\w+)int", stem)
    return m.group(1) if m and os.path.exists(os.path.join(folder, m.group(1) + ".c")) else None


def module_includes():
    """module -> the modules it includes (a module is x.c with x.h, and its private header xint.h
    if it has one)."""
    graph = {}
    folder = os.path.join(SRC, "src")
    for name in os.listdir(folder):
        if not name.endswith((".c", ".h")):
            continue
        module = private_owner(name[:-2], folder) or name[:-2]
        with open(os.path.join(folder, name)) as f:
            for inc in re.findall(r'^#include "([^"]+)\.h"', f.read(), re.M):
                inc_module = private_owner(inc, folder) or inc
                if inc_module != module and os.path.exists(os.path.join(folder, inc + ".h")):
                    graph.setdefault(module, set()).add(inc_module)
        graph.setdefault(module, set())
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


class Layout(unittest.TestCase):
    def test_no_include_cycle(self):
        cycle = find_cycle(module_includes())
        self.assertIsNone(cycle, f"src/ has an include cycle: {' -> '.join(cycle or [])}")

    def test_the_cycle_finder_finds_one(self):
        self.assertEqual(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
        self.assertIsNone(find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}))

    def test_the_parts_of_the_lua_api_are_leaves_listed_in_linit(self):
        folder = os.path.join(SRC, "src")
        libs = sorted(n[:-2] for n in os.listdir(folder) if re.fullmatch(r"l[a-z]+lib\.c", n) and n != "llib.c")
        headers = sorted(n for n in os.listdir(folder) if re.fullmatch(r"l[a-z]+lib\.h", n) and n != "llib.h")
        self.assertEqual(headers, [], "a library has no header: what libraries share lives in a helper file")
        with open(os.path.join(folder, "linit.c")) as f:
            listed = sorted(set(re.findall(r"X\((l[a-z]+lib)_open\)", f.read())))
        self.assertEqual(listed, libs, "every l*lib.c is one line of linit.c")

    def test_libmicrohttpd_stays_behind_http_h(self):
        folder = os.path.join(SRC, "src")
        users = []
        for name in sorted(os.listdir(folder)):
            if not name.endswith((".c", ".h")):
                continue
            with open(os.path.join(folder, name)) as f:
                text = f.read()
            if re.search(r"<microhttpd\.h>|\bMHD_", text):
                users.append(name)
        self.assertIn("http.c", users, "the pattern finds libmicrohttpd where it is used")
        front = [n for n in users if re.fullmatch(r"http\w*\.c", n) or n == "httpint.h"]
        self.assertEqual(users, front, "only the HTTP front (src/http*.c and httpint.h) uses libmicrohttpd")

    def test_private_headers_stay_private(self):
        folder = os.path.join(SRC, "src")
        names = sorted(os.listdir(folder))
        private = {n[:-2]: private_owner(n[:-2], folder) for n in names if n.endswith(".h")}
        private = {stem: owner for stem, owner in private.items() if owner}
        self.assertIn("httpint", private, "the HTTP front's private header is found")
        outside = []
        for name in names:
            if not name.endswith((".c", ".h")):
                continue
            with open(os.path.join(folder, name)) as f:
                for inc in re.findall(r'^#include "([^"]+)\.h"', f.read(), re.M):
                    owner = private.get(inc)
                    if owner and not re.fullmatch(rf"{owner}\w*\.c", name):
                        outside.append(f"{name} includes {inc}.h")
        self.assertEqual(outside, [], "a private header xint.h is included only by the files x*.c of its module")

    def test_no_file_is_over_800_lines(self):
        folder = os.path.join(SRC, "src")
        long = []
        for name in sorted(os.listdir(folder)):
            if name.endswith((".c", ".h")):
                with open(os.path.join(folder, name)) as f:
                    lines = sum(1 for _ in f)
                if lines > 800:
                    long.append(f"{name}: {lines} lines")
        self.assertEqual(long, [], "a file past 800 lines is split by concern")


# A function declared at the top level of a header: "type name(args);" (possibly over
# several lines), not a typedef, a macro or a static one.
DECLARATION = re.compile(r"^(?!typedef|#|static|extern|struct|enum|union|\s|/|\*)[A-Za-z_][\w \*]*?\b([a-z_][a-z0-9_]*)"
                         r"\s*\([^;{}]*\)\s*;", re.M)


def header_functions():
    """(header, function) for every function a header of src/ declares."""
    folder = os.path.join(SRC, "src")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".h"):
            with open(os.path.join(folder, name)) as f:
                for m in DECLARATION.finditer(f.read()):
                    yield name, m.group(1)


class Headers(unittest.TestCase):
    def test_every_declared_function_is_used_outside_its_file(self):
        texts = {}
        for base in ("src", os.path.join("tests", "unit"), os.path.join("tests", "fuzz")):
            for root, _, files in os.walk(os.path.join(SRC, base)):
                for n in files:
                    if n.endswith((".c", ".h")):
                        with open(os.path.join(root, n)) as f:
                            texts[os.path.join(root, n)] = f.read()
        found, unused = 0, []
        for header, function in header_functions():
            found += 1
            own = {os.path.join(SRC, "src", header), os.path.join(SRC, "src", header[:-2] + ".c")}
            if not any(re.search(rf"\b{function}\b", text) for path, text in texts.items() if path not in own):
                unused.append(f"{header}: {function}")
        self.assertGreater(found, 200, "the declaration pattern finds the headers' functions")
        self.assertEqual(unused, [], "declared in a header but used only in its own file: make it static")

    def test_the_pattern_finds_declarations(self):
        text = ("int a_one(int x);\nstatic int hidden(void);\ntypedef int fn_t(void *ud);\n"
                "const char *a_two(const struct x *p,\n                  size_t n);\n#define A_MACRO(x) (x)\n")
        self.assertEqual([m.group(1) for m in DECLARATION.finditer(text)], ["a_one", "a_two"])


@unittest.skipIf(SANITIZED, "the plain build checks the libraries")
class Symbols(unittest.TestCase):
    def defined(self, args, path):
        out = subprocess.run(["nm", *args, "--defined-only", path], capture_output=True, text=True, check=True).stdout
        return {line.split()[-1] for line in out.splitlines() if re.match(r"^[0-9a-f]+ [A-TV-Z] ", line)}

    def test_only_the_public_api_is_exported(self):
        for args, lib in [(["-g"], "libtokend.a"), (["-D"], "libtokend.so")]:
            with self.subTest(lib=lib):
                names = self.defined(args, os.path.join(BUILD, lib))
                self.assertTrue({"tokend_server_create", "tokend_mint"} <= names, names)
                others = sorted(n for n in names if not n.startswith("tokend_") and not n.startswith("_"))
                self.assertEqual(others, [], f"{lib} exports symbols outside the tokend_ prefix")

    def test_a_program_may_define_the_core_s_internal_names(self):
        program = r'''
#include <stdio.h>
#include <string.h>
#include "tokend.h"
/* Names the core uses inside: the program's own must win without a clash. */
int log_msg(const char *s) { return (int)strlen(s); }
int url_decode_path(int x) { return x + 1; }
int main(void) {
    tokend_config cfg;
    tokend_config_init(&cfg);
    printf("%d %d %d\n", log_msg("abc"), url_decode_path(41), cfg.port);
    return 0;
}
'''
        with open(os.path.join(BUILD, "tokend.pc")) as f:      # what a static link needs, as pkg-config says
            deps = re.search(r"^Libs\.private:(.*)$", f.read(), re.M).group(1).split()
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "p.c")
            with open(src, "w") as f:
                f.write(program)
            inc = "-I" + os.path.join(SRC, "include")
            for kind, libs in [("static", [os.path.join(BUILD, "libtokend.a"), *deps, "-lm", "-lpthread"]),
                               ("shared", ["-L" + BUILD, "-ltokend", "-Wl,-rpath," + BUILD])]:
                with self.subTest(kind=kind):
                    exe = os.path.join(d, kind)
                    cc = subprocess.run(["cc", "-std=c11", inc, src, *libs, "-o", exe], capture_output=True, text=True)
                    self.assertEqual(cc.returncode, 0, cc.stderr)
                    out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
                    self.assertEqual(out, "3 42 8000\n")


class Settings(unittest.TestCase):
    def table(self):
        out = subprocess.run([BIN, "--help"], capture_output=True, text=True, check=True).stdout
        env_part = out.split("Settings from the environment", 1)[1]
        envs = set(re.findall(r"^  ([A-Z][A-Z0-9_]+) ", env_part, re.M))
        flags = set(re.findall(r"^  --([a-z-]+)", out, re.M))
        return envs, flags

    def help_texts(self):
        """Variable -> its help text in --help (without the default)."""
        out = subprocess.run([BIN, "--help"], capture_output=True, text=True, check=True).stdout
        env_part = out.split("Settings from the environment", 1)[1]
        return {m.group(1): m.group(2) for m in
                re.finditer(r"^  ([A-Z][A-Z0-9_]+) +(.*?)(?: \(default [^)]*\))?$", env_part, re.M)}

    def man_page(self):
        """The flags and variables tokend.8 lists, and its text with runs of spaces as one."""
        if not shutil.which("groff"):
            self.skipTest("groff is not installed (make test installs groff-base)")
        p = subprocess.run(["groff", "-man", "-Tascii", "-P-cbou", "-ww", os.path.join(BUILD, "tokend.8")],
                           capture_output=True, text=True, check=True)
        self.assertEqual(p.stderr, "", "groff has warnings about tokend.8")
        options, rest = p.stdout.split("\nOPTIONS\n", 1)[1].split("\nENVIRONMENT\n", 1)
        environment = rest.split("\nFILES\n", 1)[0]
        flags = set(re.findall(r"^ {7}--([a-z-]+)", options, re.M))
        envs = set(re.findall(r"^ {7}([A-Z][A-Z0-9_]+)\b", environment, re.M))
        return flags, envs, " ".join(p.stdout.split())

    def test_man_page_lists_every_setting_in_help_s_words(self):
        envs, flags = self.table()
        man_flags, man_envs, text = self.man_page()
        self.assertEqual(man_flags, flags)
        self.assertEqual(man_envs, envs)
        helps = self.help_texts()
        self.assertEqual(set(helps), envs)
        for env, help in helps.items():
            with self.subTest(env=env):
                self.assertIn(f"{env} {' '.join(help.split())}.", text)

    def test_env_example_lists_every_setting(self):
        envs, _ = self.table()
        with open(os.path.join(SRC, ".env.example")) as f:
            listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", f.read(), re.M))
        self.assertEqual(listed, envs)

    def test_readme_lists_every_setting(self):
        envs, flags = self.table()
        with open(os.path.join(SRC, "README.md")) as f:
            readme = f.read()
        rows = re.findall(r"^\| (`--[^|]*`)? ?\| (`[A-Z][A-Z0-9_]+`)? ?\|", readme, re.M)
        self.assertTrue(rows, "the README has a settings table")
        self.assertEqual({r[1].strip("`") for r in rows if r[1]}, envs)
        self.assertEqual({re.match(r"`--([a-z-]+)", r[0]).group(1) for r in rows if r[0]}, flags)


class Packaging(unittest.TestCase):
    def read(self, *path):
        with open(os.path.join(SRC, *path)) as f:
            return f.read()

    def control_field(self, paragraph_start, field):
        """The package names in a field of debian/control's paragraph (alternatives, versions
        and substitutions left out)."""
        para = re.search(rf"^{paragraph_start}\n(?:.+\n)*", self.read("debian", "control"), re.M).group(0)
        value = re.search(rf"^{field}:((?:.*\n)(?:[ \t].*\n)*)", para, re.M).group(1)
        return {item.split("|")[0].split()[0] for item in value.split(",") if item.strip() and "${" not in item}

    def test_make_installs_what_the_package_build_needs(self):
        makefile = self.read("Makefile")
        def listed(var):
            text = re.search(rf"^{var} = ((?:.*\\\n)*.*)$", makefile, re.M).group(1).replace("\\\n", " ")
            return set(text.split())
        installed = (listed("RUN_PACKAGES") | listed("DEB_PACKAGES")) - {"$(RUN_PACKAGES)"}
        build_deps = self.control_field("Source: tokend", "Build-Depends") - {"debhelper-compat"}
        self.assertEqual(build_deps - installed, set(), "debian/control's build dependencies make test does not install")
        self.assertTrue({"$(DEB_PACKAGES)", "debootstrap"} <= listed("TEST_PACKAGES"))
        dev = {p for p in build_deps if p.endswith("-dev")} - {"libqrencode-dev"}   # the command line's alone
        self.assertEqual(self.control_field("Package: libtokend-dev", "Depends") - {"libtokend0"}, dev,
                         "libtokend-dev depends on the libraries' development packages tokend-static.pc links")

    def test_the_package_and_the_rock_carry_the_project_s_version(self):
        read = self.read
        project = re.search(r"project\(tokend VERSION ([0-9.]+)", read("CMakeLists.txt")).group(1)
        self.assertIn(f'#define TOKEND_VERSION "{project}"', read("include", "tokend.h"))
        debian = re.match(r"tokend \(([^)]+)\)", read("debian", "changelog")).group(1)
        self.assertEqual(debian.rsplit("-", 1)[0], project, "debian/changelog's upstream version")
        self.assertIn(f'version = "{project}-', read(f"tokend-{project}-1.rockspec"))


if __name__ == "__main__":
    unittest.main()
