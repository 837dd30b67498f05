/* test_upstream.c: the upstream reply parser and failure classification, as tables. */
#include <curl/curl.h>

#include "check.h"
#include "json.h"
#include "upstream.h"

static void test_json(void) {
    static const struct {
        const char *body;
        int rc;
        int has_token;
        const char *token;
        long expires;
        const char *error;
    } cases[] = {
        { "{\"token\":\"abc\",\"expires_in_seconds\":60}", 0, 1, "abc", 60, "" },
        { " {\"expires_in_seconds\": 5 , \"token\" : \"a\\/b\\u00e9\"} \n", 0, 1, "a/b\xC3\xA9", 5, "" },
        { "{\"error\":\"Invalid API key\",\"code\":\"x\",\"details\":{\"a\":[1,2,{\"b\":null}]}}", 0, 0, "", 0,
          "Invalid API key" },
        { "{\"token\":\"\"}", 0, 0, "", 0, "" },
        { "{\"token\":5}", 0, 0, "", 0, "" },
        { "{\"token\":\"abc\"", -1, 0, "", 0, "" },
        { "{\"token\":\"abc\"} x", -1, 0, "", 0, "" },
        { "[\"token\"]", -1, 0, "", 0, "" },
        { "", -1, 0, "", 0, "" },
        { "{\"a\":tru}", -1, 0, "", 0, "" },
        { "{\"a\":01}", -1, 0, "", 0, "" },
        { "{\"a\":\"\\ud800\"}", -1, 0, "", 0, "" },
        { "{\"a\":\"ctl\x01\"}", -1, 0, "", 0, "" },
        { "{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}", -1, 0, "", 0,
          "" },
        { "{\"expires_in_seconds\":1.5,\"token\":\"t\"}", 0, 1, "t", 0, "" },
        { "{\"a\":-0.5e+3,\"b\":true,\"c\":false,\"d\":null,\"token\":\"\\ud83d\\ude00\"}", 0, 1, "\xF0\x9F\x98\x80", 0,
          "" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        static json_token_reply r;
        int rc = json_parse_token_reply(cases[i].body, strlen(cases[i].body), &r);
        CHECK(rc == cases[i].rc, "case %zu (%s): rc %d", i, cases[i].body, rc);
        CHECK(r.has_token == cases[i].has_token, "case %zu: has_token %d", i, r.has_token);
        if (r.has_token) CHECK_STR(r.token, cases[i].token, cases[i].body);
        if (r.has_expires)
            CHECK(r.expires_in_seconds == cases[i].expires, "case %zu: expires %ld", i, r.expires_in_seconds);
        else CHECK(cases[i].expires == 0, "case %zu: expires missing", i);
        CHECK_STR(r.error, cases[i].error, cases[i].body);
    }
    char out[64];
    size_t n = json_escape(out, 0, sizeof out, "a\"b\\c\nd\x01");
    out[n] = '\0';
    CHECK_STR(out, "a\\\"b\\\\c\\nd\\u0001", "escape");
}

static void test_classify(void) {
    static const struct {
        int curl;
        long status;
        const char *body;
        long retry;
        const char *kind;
        const char *needle;
    } cases[] = {
        { CURLE_OK, 200, "{\"token\":\"tok\",\"expires_in_seconds\":30}", -1, NULL, NULL },
        { CURLE_OK, 200, "{\"expires_in_seconds\":30}", -1, "bad_response", "without a token" },
        { CURLE_OK, 200, "<html>", -1, "bad_response", "not JSON" },
        { CURLE_OK, 401, "{\"error\":\"Invalid API key\"}", -1, "unauthorized",
          "refused the API key (HTTP 401): Invalid API key" },
        { CURLE_OK, 401, "{\"error\":\"Invalid API key: sk-SECRET\"}", -1, "unauthorized", "[redacted]" },
        { CURLE_OK, 403, "", -1, "unauthorized", "HTTP 403" },
        { CURLE_OK, 429, "{\"error\":\"slow down\"}", 7, "rate_limited", "HTTP 429" },
        { CURLE_OK, 400, "{\"error\":\"bad\"}", -1, "bad_request", "HTTP 400): bad" },
        { CURLE_OK, 500, "oops", -1, "upstream_error", "HTTP 500" },
        { CURLE_OK, 302, "", -1, "bad_response", "HTTP 302" },
        { CURLE_OPERATION_TIMEDOUT, 0, "", -1, "timeout", "within 1500 ms" },
        { CURLE_COULDNT_CONNECT, 0, "", -1, "connect", "cannot connect" },
        { CURLE_PEER_FAILED_VERIFICATION, 0, "", -1, "tls", "TLS failure" },
        { CURLE_RECV_ERROR, 0, "", -1, "network", "network failure" },
        { CURLE_WRITE_ERROR, 200, "", -1, "bad_response", "larger than" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        upstream_result r;
        char token[JSON_TOKEN_MAX], err[800];
        upstream_classify(cases[i].curl, "", cases[i].status, cases[i].body, strlen(cases[i].body), cases[i].retry,
                          1500, "sk-SECRET", &r, token, sizeof token, err, sizeof err);
        if (!cases[i].kind) {
            CHECK(r.token && strcmp(r.token, "tok") == 0 && r.expires_in_seconds == 30, "case %zu: token", i);
            continue;
        }
        CHECK(r.token == NULL, "case %zu: no token", i);
        CHECK(r.kind && strcmp(r.kind, cases[i].kind) == 0, "case %zu: kind %s, want %s", i, r.kind, cases[i].kind);
        CHECK(r.error && strstr(r.error, cases[i].needle), "case %zu: error \"%s\" lacks \"%s\"", i, r.error,
              cases[i].needle);
        CHECK(r.error && !strstr(r.error, "sk-SECRET"), "case %zu: the key leaked: %s", i, r.error);
        CHECK(r.retry_after == cases[i].retry, "case %zu: retry_after %ld", i, r.retry_after);
        CHECK(r.http_status == (cases[i].curl == CURLE_OK ? cases[i].status : 0), "case %zu: status %d", i,
              r.http_status);
    }
}

int main(void) {
    test_json();
    test_classify();
    return check_report("upstream");
}
