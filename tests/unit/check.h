/* check.h: a tiny assertion harness for tokend's table-driven unit tests. */
#ifndef TOKEND_CHECK_H
#define TOKEND_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures, check_count;

#define CHECK(cond, ...) \
    do { \
        check_count++; \
        if (!(cond)) { \
            check_failures++; \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__); \
            fputc('\n', stderr); \
        } \
    } while (0)

#define CHECK_STR(got, want, ...) \
    CHECK(strcmp((got), (want)) == 0, "got \"%s\", want \"%s\" (%s)", (got), (want), __VA_ARGS__)

static inline int check_report(const char *suite) {
    printf("%s: %d passed, %d failed\n", suite, check_count - check_failures, check_failures);
    return check_failures ? 1 : 0;
}

#endif
