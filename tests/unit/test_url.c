/* test_url.c: percent-decoding, query parsing and endpoint URLs, as tables. */
#include <stdlib.h>

#include "check.h"
#include "url.h"

static void test_decode_path(void) {
    static const struct {
        const char *in;
        int rc;
        const char *out;
    } cases[] = {
        { "/", URL_OK, "/" },
        { "/a%20b", URL_OK, "/a b" },
        { "/a+b", URL_OK, "/a+b" },
        { "/%2e%2E/x", URL_OK, "/../x" },
        { "/%252e", URL_OK, "/%2e" },
        { "/%C3%A9", URL_OK, "/\xC3\xA9" },
        { "/a%00b", URL_ERR_MALFORMED, "" },
        { "/a%0", URL_ERR_MALFORMED, "" },
        { "/a%", URL_ERR_MALFORMED, "" },
        { "/a%zz", URL_ERR_MALFORMED, "" },
        { "/%5c", URL_OK, "/\\" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[64];
        size_t n = 0;
        int rc = url_decode_path(cases[i].in, strlen(cases[i].in), out, sizeof out, &n);
        CHECK(rc == cases[i].rc, "decode %s: rc %d, want %d", cases[i].in, rc, cases[i].rc);
        if (rc == URL_OK) CHECK_STR(out, cases[i].out, cases[i].in);
    }
    char small[4];
    CHECK(url_decode_path("/abcdef", 7, small, sizeof small, NULL) == URL_ERR_TOO_LONG, "too long");
}

typedef struct seen {
    char buf[256];
} seen;

static int collect(void *ud, const char *name, size_t nlen, const char *value, size_t vlen) {
    seen *s = ud;
    size_t o = strlen(s->buf);
    snprintf(s->buf + o, sizeof s->buf - o, "[%.*s=%.*s]", (int)nlen, name, (int)vlen, value);
    return 0;
}

static void test_query(void) {
    static const struct {
        const char *in;
        size_t max;
        int rc;
        const char *out;
    } cases[] = {
        { "", 10, 0, "" },
        { "a=1", 10, 1, "[a=1]" },
        { "a=1&b=two+words", 10, 2, "[a=1][b=two words]" },
        { "flag&x=", 10, 2, "[flag=][x=]" },
        { "&&a=1&&", 10, 1, "[a=1]" },
        { "a&b&c&d", 10, 4, "[a=][b=][c=][d=]" },
        { "k%3D=v%26w", 10, 1, "[k==v&w]" },
        { "a=%ZZ", 10, URL_ERR_MALFORMED, "" },
        { "a=1&b=2&c=3", 2, URL_ERR_TOO_MANY, "[a=1][b=2]" },
        { "expires_in_seconds=30", 10, 1, "[expires_in_seconds=30]" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        seen s = { "" };
        size_t n = strlen(cases[i].in);
        char *scratch = malloc(URL_QUERY_SCRATCH(n));
        int rc = url_parse_query(cases[i].in, n, scratch, cases[i].max, collect, &s);
        CHECK(rc == cases[i].rc, "query \"%s\": rc %d, want %d", cases[i].in, rc, cases[i].rc);
        if (rc >= 0 || rc == URL_ERR_TOO_MANY) CHECK_STR(s.buf, cases[i].out, cases[i].in);
        free(scratch);
    }
}

static void test_endpoints(void) {
    static const struct {
        const char *base;
        int rc;
        const char *token, *ws;
    } cases[] = {
        { "https://streaming.assemblyai.com", URL_OK, "https://streaming.assemblyai.com/v3/token",
          "wss://streaming.assemblyai.com/v3/ws" },
        { "https://streaming.eu.assemblyai.com/", URL_OK, "https://streaming.eu.assemblyai.com/v3/token",
          "wss://streaming.eu.assemblyai.com/v3/ws" },
        { "http://127.0.0.1:9301", URL_OK, "http://127.0.0.1:9301/v3/token", "ws://127.0.0.1:9301/v3/ws" },
        { "HTTP://localhost:8080/prefix//", URL_OK, "http://localhost:8080/prefix/v3/token",
          "ws://localhost:8080/prefix/v3/ws" },
        { "ftp://example.com", URL_ERR_MALFORMED, "", "" },
        { "streaming.assemblyai.com", URL_ERR_MALFORMED, "", "" },
        { "https://", URL_ERR_MALFORMED, "", "" },
        { "https://user:pw@host", URL_ERR_MALFORMED, "", "" },
        { "https://host/?x=1", URL_ERR_MALFORMED, "", "" },
        { "https://host/a b", URL_ERR_MALFORMED, "", "" },
        { "", URL_ERR_MALFORMED, "", "" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        url_endpoints e;
        char err[256] = "";
        int rc = url_streaming_endpoints(cases[i].base, &e, err, sizeof err);
        CHECK(rc == cases[i].rc, "endpoints \"%s\": rc %d (%s)", cases[i].base, rc, err);
        if (rc == URL_OK) {
            CHECK_STR(e.token_url, cases[i].token, cases[i].base);
            CHECK_STR(e.websocket_url, cases[i].ws, cases[i].base);
        } else {
            CHECK(err[0] != '\0', "an error message for \"%s\"", cases[i].base);
        }
    }
}

/* Data zones by name (ASSEMBLYAI_REGION_URLS) and the Voice Agent API's endpoints. */
static void test_regions(void) {
    static const struct {
        const char *text;
        int rc;
        size_t n;
        const char *second, *second_token, *second_ws; /* the second region, when there is one */
    } cases[] = {
        { "us=https://streaming.us.assemblyai.com, eu=https://streaming.eu.assemblyai.com", URL_OK, 2, "eu",
          "https://streaming.eu.assemblyai.com/v3/token", "wss://streaming.eu.assemblyai.com/v3/ws" },
        { " eu=http://127.0.0.1:9001/ ,x-1=http://127.0.0.1:9002/prefix,", URL_OK, 2, "x-1",
          "http://127.0.0.1:9002/prefix/v3/token", "ws://127.0.0.1:9002/prefix/v3/ws" },
        { "", URL_OK, 0, NULL, NULL, NULL },
        { "eu", URL_ERR_MALFORMED, 0, NULL, NULL, NULL },
        { "=https://a.example", URL_ERR_MALFORMED, 0, NULL, NULL, NULL },
        { "e u=https://a.example", URL_ERR_MALFORMED, 0, NULL, NULL, NULL },
        { "eu=https://a.example, eu=https://b.example", URL_ERR_MALFORMED, 0, NULL, NULL, NULL },
        { "eu=ftp://a.example", URL_ERR_MALFORMED, 0, NULL, NULL, NULL },
        { "eu=https://a.example?x=1", URL_ERR_MALFORMED, 0, NULL, NULL, NULL },
        { "a=http://h,b=http://h,c=http://h,d=http://h,e=http://h,f=http://h,g=http://h,h=http://h,i=http://h",
          URL_ERR_TOO_MANY, 0, NULL, NULL, NULL },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        url_region r[URL_REGION_MAX];
        size_t n = 99;
        char err[256] = "";
        int rc = url_regions(cases[i].text, r, &n, err, sizeof err);
        CHECK(rc == cases[i].rc, "regions \"%s\": rc %d (%s)", cases[i].text, rc, err);
        if (rc != URL_OK) {
            CHECK(err[0] != '\0', "an error message for \"%s\"", cases[i].text);
            continue;
        }
        CHECK(n == cases[i].n, "regions \"%s\": %zu", cases[i].text, n);
        if (cases[i].second && n == 2) {
            CHECK_STR(r[1].name, cases[i].second, cases[i].text);
            CHECK_STR(r[1].endpoints.token_url, cases[i].second_token, cases[i].text);
            CHECK_STR(r[1].endpoints.websocket_url, cases[i].second_ws, cases[i].text);
        }
    }
    url_endpoints e;
    char err[256];
    CHECK(url_agent_endpoints("https://agents.assemblyai.com/", &e, err, sizeof err) == URL_OK, "agents: %s", err);
    CHECK_STR(e.token_url, "https://agents.assemblyai.com/v1/token", "the Voice Agent token endpoint");
    CHECK_STR(e.websocket_url, "wss://agents.assemblyai.com/v1/ws", "the Voice Agent socket");
    CHECK(url_agent_endpoints("agents.assemblyai.com", &e, err, sizeof err) == URL_ERR_MALFORMED &&
                  strstr(err, "Voice Agent URL"),
          "a scheme is needed: %s", err);
}

int main(void) {
    test_decode_path();
    test_query();
    test_endpoints();
    test_regions();
    return check_report("url");
}
