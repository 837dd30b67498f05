/* fuzz_query.c: query-string parsing stays within its scratch buffer and its count. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "url.h"

typedef struct seen {
    size_t calls;
    size_t qlen;
} seen;

static int on_arg(void *ud, const char *name, size_t nlen, const char *value, size_t vlen) {
    seen *s = ud;
    s->calls++;
    if (name[nlen] != '\0' || value[vlen] != '\0' || nlen + vlen > s->qlen) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *scratch = malloc(URL_QUERY_SCRATCH(size));
    seen s = { 0, size };
    int n = url_parse_query((const char *)data, size, scratch, 16, on_arg, &s);
    if (n > 16 || (n >= 0 && (size_t)n != s.calls)) abort();
    free(scratch);
    return 0;
}
