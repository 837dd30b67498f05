/* fuzz_static.c: the headers a file's answer depends on (Range, If-* lists and dates,
 * Accept-Encoding, Accept) never read past their text and give answers within bounds. The
 * input's first byte picks the parser, the rest is the header's value. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "header.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    char *value = malloc(size);
    memcpy(value, data + 1, size - 1);
    value[size - 1] = '\0'; /* headers reach the parsers NUL-terminated */
    uint64_t first = 0, last = 0, length = (uint64_t)data[0] * 977;
    time_t t;
    switch (data[0] % 4) {
    case 0: {
        int rc = header_range(value, length, &first, &last);
        if (rc == HEADER_RANGE_ONE && (first > last || last >= length)) abort();
        break;
    }
    case 1:
        header_etag_matches(value, "\"1f-5e0a\"", data[0] & 4);
        header_etag_matches(value, "\"1f-5e0a\"", 0);
        break;
    case 2:
        if (header_date(value, &t) == 0 && t < 0) abort();
        break;
    default: {
        static const char *const codings[] = { "gzip", "br", "identity", "text/html" }; /* and Accept */
        for (int i = 0; i < 4; i++) {
            int q = header_accepts(value, codings[i]);
            if (q < 0 || q > 1000) abort();
        }
    }
    }
    free(value);
    return 0;
}
