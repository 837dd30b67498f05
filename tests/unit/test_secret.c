/* test_secret.c: the process's secrets (secret.c) and their redaction (log_add_secret, log_redact_mem). */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "envfile.h"
#include "log.h"
#include "secret.h"

/* Redaction of several secrets at once, in text and in bytes holding NULs. */
static void test_redaction(void) {
    static const struct {
        const char *in;
        const char *out;
    } cases[] = {
        { "nothing to hide", "nothing to hide" },
        { "key=first-SECRET-0123456789", "key=[redacted]" },
        { "two: second-secret-abcdefgh and FIRST-secret-0123", "two: [redacted] and [redacted]" },
        { "a piece: secret-0123 / SECRET-ABCD", "a piece: [redacted] / [redacted]" },
        { "seven ch: -secret and et-0123", "seven ch: -secret and et-0123" },
    };
    log_add_secret("first-SECRET-0123456789");
    log_add_secret("second-secret-abcdefgh");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[256];
        CHECK_STR(log_redact(out, sizeof out, cases[i].in), cases[i].out, cases[i].in);
        char *mem = NULL;
        size_t len = 0;
        int rc = log_redact_mem(cases[i].in, strlen(cases[i].in), &mem, &len);
        int same = strcmp(cases[i].in, cases[i].out) == 0;
        CHECK(rc == (same ? 0 : 1), "log_redact_mem rc %d for \"%s\"", rc, cases[i].in);
        if (rc == 1)
            CHECK(len == strlen(cases[i].out) && memcmp(mem, cases[i].out, len) == 0, "bytes of \"%s\"", cases[i].in);
        free(mem);
    }
    /* Bytes with NULs: eight NUL bytes are no secret (the hash set's empty value). */
    const char binary[] = "\0\0\0\0\0\0\0\0\0\0x\0second-secret-abcdefgh\0tail";
    char *mem = NULL;
    size_t len = 0;
    CHECK(log_redact_mem(binary, sizeof binary - 1, &mem, &len) == 1, "a secret among NULs");
    static const char want[] = "\0\0\0\0\0\0\0\0\0\0x\0[redacted]\0tail";
    CHECK(len == sizeof want - 1 && memcmp(mem, want, len) == 0, "the NULs are kept, the secret is not (%zu)", len);
    free(mem);
    CHECK(log_redact_mem("\0\0\0\0\0\0\0\0\0\0", 10, &mem, &len) == 0 && !mem, "NUL bytes alone hold no secret");
}

/* Declarations: from the environment, then .env; once per process; refusals. */
static void test_declare(void) {
    char err[256];
    const secret *s = NULL, *again = NULL;
    envfile *env = NULL;
    const char text[] = "FROM_FILE=file-value-0123456789\nSHORT_ONE=abc\nBOTH=file-loses-0123456789\n";
    CHECK(envfile_parse(text, sizeof text - 1, &env, err, sizeof err) == 0, "parse: %s", err);
    setenv("FROM_ENV", "env-value-0123456789", 1);
    setenv("BOTH", "env-wins-0123456789", 1);
    setenv("CONTROL", "bad\tvalue-0123456789", 1);

    CHECK(secret_declare("FROM_ENV", env, &s, err, sizeof err) == 0, "from the environment: %s", err);
    CHECK_STR(secret_value(s, NULL), "env-value-0123456789", "the value");
    CHECK(getenv("FROM_ENV") == NULL, "removed from the environment");
    CHECK(secret_declare("FROM_ENV", env, &again, err, sizeof err) == 0 && again == s, "declared twice: the same");
    CHECK(secret_find("FROM_ENV") == s && secret_find("NOT_DECLARED") == NULL, "found by name");

    CHECK(secret_declare("FROM_FILE", env, &s, err, sizeof err) == 0, "from .env: %s", err);
    CHECK_STR(secret_value(s, NULL), "file-value-0123456789", "the file's value");
    CHECK_STR(envfile_get(env, "FROM_FILE"), "", "wiped in the file's copy");
    CHECK(secret_declare("BOTH", env, &s, err, sizeof err) == 0, "both: %s", err);
    CHECK_STR(secret_value(s, NULL), "env-wins-0123456789", "the environment wins, as tokend.env reads");

    static const struct {
        const char *name, *message;
    } refused[] = {
        { "NOT_SET_HERE", "the secret NOT_SET_HERE is not set" },
        { "SHORT_ONE", "shorter than 8 bytes" },
        { "CONTROL", "holds a control character" },
        { "BAD-NAME", "a secret's name is a variable name" },
        { "1ABC", "a secret's name is a variable name" },
        { "", "a secret's name is a variable name" },
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        err[0] = '\0';
        CHECK(secret_declare(refused[i].name, env, &s, err, sizeof err) < 0 && strstr(err, refused[i].message),
              "refused \"%s\": %s", refused[i].name, err);
    }

    /* Adopted (the API key): a later declaration finds it; a .env read again is wiped. */
    CHECK(secret_adopt("ADOPTED_KEY", "adopted-value-0123456789") == 0, "adopt");
    CHECK(secret_declare("ADOPTED_KEY", NULL, &s, err, sizeof err) == 0, "the adopted one: %s", err);
    envfile *again_env = NULL;
    const char text2[] = "FROM_ENV=env-value-0123456789\nOTHER=kept\n";
    CHECK(envfile_parse(text2, sizeof text2 - 1, &again_env, err, sizeof err) == 0, "parse again");
    secret_wipe_env(again_env);
    CHECK_STR(envfile_get(again_env, "FROM_ENV"), "", "a declared secret is wiped in another copy");
    CHECK_STR(envfile_get(again_env, "OTHER"), "kept", "the rest is kept");

    char out[128];
    CHECK_STR(log_redact(out, sizeof out, "file-value-0123456789"), "[redacted]", "declared secrets are redacted");
    envfile_free(env);
    envfile_free(again_env);
}

int main(void) {
    test_redaction();
    test_declare();
    return check_report("secret");
}
