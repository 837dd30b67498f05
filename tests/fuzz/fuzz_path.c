/* fuzz_path.c: request path decoding and static path cleaning must never yield a path
 * that leaves the root. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "static.h"
#include "url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char decoded[4096], clean[4096];
    size_t n = 0;
    if (url_decode_path((const char *)data, size, decoded, sizeof decoded, &n) != URL_OK) return 0;
    if (memchr(decoded, '\0', n)) abort(); /* NUL bytes are refused while decoding */
    if (static_clean_path(decoded, clean, sizeof clean) != STATIC_OK) return 0;
    if (clean[0] == '/' || strchr(clean, '\\')) abort();
    for (const char *seg = clean; *seg;) { /* no "..", ".", or dot-name segment */
        if (seg[0] == '.') abort();
        const char *slash = strchr(seg, '/');
        if (!slash) break;
        if (slash == seg) abort(); /* no empty segment */
        seg = slash + 1;
    }
    return 0;
}
