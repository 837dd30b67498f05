/* test_header.c: Range, entity tags, HTTP dates and Accept-Encoding, as tables. */
#include <string.h>

#include "check.h"
#include "header.h"

static void test_range(void) {
    static const struct {
        const char *value;
        unsigned long long size;
        int rc;
        unsigned long long first, last;
    } cases[] = {
        { "bytes=0-99", 1000, HEADER_RANGE_ONE, 0, 99 },
        { "bytes=100-", 1000, HEADER_RANGE_ONE, 100, 999 },
        { "bytes=-100", 1000, HEADER_RANGE_ONE, 900, 999 },
        { "bytes=-5000", 1000, HEADER_RANGE_ONE, 0, 999 },
        { "bytes=990-5000", 1000, HEADER_RANGE_ONE, 990, 999 },
        { "bytes=999-999", 1000, HEADER_RANGE_ONE, 999, 999 },
        { "BYTES = 1-2", 1000, HEADER_RANGE_ONE, 1, 2 },
        { "bytes=1000-", 1000, HEADER_RANGE_UNSATISFIABLE, 0, 0 },
        { "bytes=9999999999999999999-", 1000, HEADER_RANGE_UNSATISFIABLE, 0, 0 },
        { "bytes=99999999999999999999999999999-", 1000, HEADER_RANGE_UNSATISFIABLE, 0, 0 },
        { "bytes=0-99999999999999999999999999999", 1000, HEADER_RANGE_ONE, 0, 999 },
        { "bytes=-0", 1000, HEADER_RANGE_UNSATISFIABLE, 0, 0 },
        { "bytes=0-", 0, HEADER_RANGE_UNSATISFIABLE, 0, 0 },
        { "bytes=-1", 0, HEADER_RANGE_UNSATISFIABLE, 0, 0 },
        { "bytes=5-1", 1000, HEADER_RANGE_NONE, 0, 0 },
        { "bytes=a-b", 1000, HEADER_RANGE_NONE, 0, 0 },
        { "bytes=-", 1000, HEADER_RANGE_NONE, 0, 0 },
        { "bytes=0-1,5-6", 1000, HEADER_RANGE_NONE, 0, 0 },
        { "items=0-1", 1000, HEADER_RANGE_NONE, 0, 0 },
        { "bytes 0-1", 1000, HEADER_RANGE_NONE, 0, 0 },
        { "bytes=0-1x", 1000, HEADER_RANGE_NONE, 0, 0 },
        { "bytes=--1", 1000, HEADER_RANGE_NONE, 0, 0 },
        { "", 1000, HEADER_RANGE_NONE, 0, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint64_t first = 0, last = 0;
        int rc = header_range(cases[i].value, cases[i].size, &first, &last);
        CHECK(rc == cases[i].rc, "%s (size %llu): %d, want %d", cases[i].value, cases[i].size, rc, cases[i].rc);
        if (rc == HEADER_RANGE_ONE && cases[i].rc == HEADER_RANGE_ONE)
            CHECK(first == cases[i].first && last == cases[i].last, "%s: %llu-%llu", cases[i].value,
                  (unsigned long long)first, (unsigned long long)last);
    }
}

static void test_etags(void) {
    static const struct {
        const char *list, *etag;
        int weak, want;
    } cases[] = {
        { "\"a-1\"", "\"a-1\"", 0, 1 },   { "\"x\", \"a-1\"", "\"a-1\"", 0, 1 },
        { "W/\"a-1\"", "\"a-1\"", 1, 1 }, { "W/\"a-1\"", "\"a-1\"", 0, 0 },
        { "*", "\"a-1\"", 0, 1 },         { " * ", "\"a-1\"", 1, 1 },
        { "*, \"x\"", "\"a-1\"", 1, 0 },  { "\"a-1", "\"a-1\"", 1, 0 },
        { "a-1", "\"a-1\"", 1, 0 },       { "\"a-1\"x", "\"a-1\"", 1, 0 },
        { "", "\"a-1\"", 1, 0 },          { ",,, \"a-1\" ,", "\"a-1\"", 1, 1 },
        { "\"A-1\"", "\"a-1\"", 1, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(header_etag_matches(cases[i].list, cases[i].etag, cases[i].weak) == cases[i].want, "%s vs %s",
              cases[i].list, cases[i].etag);
}

static void test_dates(void) {
    static const struct {
        const char *value;
        long long t;
    } cases[] = {
        { "Sun, 06 Nov 1994 08:49:37 GMT", 784111777 },
        { "Sunday, 06-Nov-94 08:49:37 GMT", 784111777 },
        { "Sun Nov  6 08:49:37 1994", 784111777 },
        { "Thu, 01 Jan 1970 00:00:00 GMT", 0 },
        { "Tue, 29 Feb 2028 23:59:59 GMT", 1835481599 },
        { "Sun, 06 Nov 1994 08:49:37 UTC", -1 },
        { "Sun, 06 Nov 1994 08:49:37", -1 },
        { "yesterday", -1 },
        { "Sun, 32 Nov 1994 08:49:37 GMT", -1 },
        { "Sun, 06 Foo 1994 08:49:37 GMT", -1 },
        { "Sun, 06 Nov 1994 25:49:37 GMT", -1 },
        { "", -1 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        time_t t = 0;
        int rc = header_date(cases[i].value, &t);
        if (cases[i].t < 0) CHECK(rc < 0, "%s should be refused", cases[i].value);
        else CHECK(rc == 0 && (long long)t == cases[i].t, "%s: %lld", cases[i].value, (long long)t);
    }
    char out[32];
    header_format_date(784111777, out);
    CHECK_STR(out, "Sun, 06 Nov 1994 08:49:37 GMT", "format");
}

static void test_accepts(void) {
    static const struct {
        const char *ae, *coding;
        int q;
    } cases[] = {
        { "gzip, deflate, br", "br", 1000 },
        { "gzip, deflate, br", "gzip", 1000 },
        { "gzip, deflate, br", "identity", 1 },
        { "gzip;q=0.5, br;q=0.8", "gzip", 500 },
        { "gzip;q=0.5, br;q=0.8", "br", 800 },
        { "gzip;q=0", "gzip", 0 },
        { "GZIP;Q=1.000", "gzip", 1000 },
        { "x-gzip", "gzip", 1000 },
        { "*", "br", 1000 },
        { "*;q=0.3, gzip;q=0.9", "br", 300 },
        { "*;q=0.3, gzip;q=0.9", "gzip", 900 },
        { "identity;q=0, *;q=0", "identity", 0 },
        { "", "gzip", 0 },
        { "", "identity", 1 },
        { "gzip;q=2", "gzip", 0 },
        { "gzip;q=abc", "gzip", 0 },
        { "gzip;q=0.0001", "gzip", 0 },
        { "gzip;q=-1", "gzip", 0 },
        { "gzip;q=", "gzip", 0 },
        { "gzip ; q = 0.5", "gzip", 1000 },
        { "gzip;level=9;q=0.7", "gzip", 700 },
        { ";;;,,,;q=1", "gzip", 0 },
        { "br", "gzip", 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(header_accepts(cases[i].ae, cases[i].coding) == cases[i].q, "%s for %s: %d", cases[i].ae, cases[i].coding,
              header_accepts(cases[i].ae, cases[i].coding));
    CHECK(header_accepts(NULL, "gzip") == 0 && header_accepts(NULL, "identity") == 1000, "no header: identity only");
}

int main(void) {
    test_range();
    test_etags();
    test_dates();
    test_accepts();
    return check_report("header");
}
