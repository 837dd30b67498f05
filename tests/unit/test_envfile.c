/* test_envfile.c: the .env parser, as a table of file texts and the settings they give. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>

#include "check.h"
#include "envfile.h"

static void test_env_parse(void) {
    static const struct {
        const char *text;
        int ok;
        const char *name, *value;
        const char *err;
    } cases[] = {
        { "ASSEMBLYAI_API_KEY=abc123\n", 1, "ASSEMBLYAI_API_KEY", "abc123", NULL },
        { "A=1\r\nB=2\r\n", 1, "B", "2", NULL },
        { "# comment\n\n  A = spaced value  \n", 1, "A", "spaced value", NULL },
        { "export A=exported\n", 1, "A", "exported", NULL },
        { "A=\"double # not comment\"\n", 1, "A", "double # not comment", NULL },
        { "A='single \\n literal'\n", 1, "A", "single \\n literal", NULL },
        { "A=\"esc\\n\\\"q\\\"\"\n", 1, "A", "esc\n\"q\"", NULL },
        { "A=value # trailing comment\n", 1, "A", "value", NULL },
        { "A=pass#word\n", 1, "A", "pass#word", NULL },
        { "A=\n", 1, "A", "", NULL },
        { "A=1\nA=2\n", 1, "A", "2", NULL },
        { "\xEF\xBB\xBF"
          "A=bom\n",
          1, "A", "bom", NULL },
        { "A=no newline at end", 1, "A", "no newline at end", NULL },
        { "just text\n", 0, NULL, NULL, "line 1: expected NAME=value" },
        { "A=1\n=2\n", 0, NULL, NULL, "line 2: expected NAME=value" },
        { "1A=2\n", 0, NULL, NULL, "line 1: expected NAME=value" },
        { "A=\"open\n", 0, NULL, NULL, "line 1: unterminated double-quoted value" },
        { "A='x' y\n", 0, NULL, NULL, "line 1: unexpected text after the closing quote" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        envfile *env = NULL;
        char err[200] = "";
        int rc = envfile_parse(cases[i].text, strlen(cases[i].text), &env, err, sizeof err);
        CHECK((rc == 0) == cases[i].ok, "case %zu: rc %d (%s)", i, rc, err);
        if (rc == 0 && cases[i].name) {
            const char *v = envfile_get(env, cases[i].name);
            CHECK(v != NULL, "case %zu: %s is set", i, cases[i].name);
            if (v) CHECK_STR(v, cases[i].value, cases[i].text);
        }
        if (rc != 0) CHECK_STR(err, cases[i].err, cases[i].text);
        envfile_free(env);
    }
}

static void test_lookup_prefers_environment(void) {
    envfile *env = NULL;
    char err[100];
    const char *text = "TOKEND_TEST_SETTING=from-file\nTOKEND_TEST_ONLY_FILE=file\n";
    CHECK(envfile_parse(text, strlen(text), &env, err, sizeof err) == 0, "%s", err);
    setenv("TOKEND_TEST_SETTING", "from-env", 1);
    unsetenv("TOKEND_TEST_ONLY_FILE");
    CHECK_STR(envfile_lookup(env, "TOKEND_TEST_SETTING"), "from-env", "real environment wins");
    CHECK_STR(envfile_lookup(env, "TOKEND_TEST_ONLY_FILE"), "file", "file fills the gaps");
    CHECK(envfile_lookup(env, "TOKEND_TEST_NOWHERE") == NULL, "unset is NULL");
    CHECK(envfile_count(env) == 2, "two entries");
    envfile_free(env);
    CHECK(envfile_load("/nonexistent/.env", &env, err, sizeof err) < 0 && strstr(err, "/nonexistent/.env"),
          "missing file names itself: %s", err);
}

int main(void) {
    test_env_parse();
    test_lookup_prefers_environment();
    return check_report("envfile");
}
