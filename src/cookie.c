/* cookie.c: HTTP cookies: the pairs of a Cookie header, and what a Set-Cookie may carry. */
#include <string.h>

#include "cookie.h"

void cookie_parse(const char *header, cookie_fn *fn, void *ud) {
    const char *p = header;
    while (p && *p) {
        while (*p == ' ' || *p == '\t' || *p == ';') p++;
        const char *item = p, *end = p + strcspn(p, ";");
        p = *end ? end + 1 : end;
        const char *eq = memchr(item, '=', (size_t)(end - item));
        if (!eq) continue;
        const char *n1 = item, *n2 = eq, *v1 = eq + 1, *v2 = end;
        while (n2 > n1 && (n2[-1] == ' ' || n2[-1] == '\t')) n2--;
        while (v1 < v2 && (*v1 == ' ' || *v1 == '\t')) v1++;
        while (v2 > v1 && (v2[-1] == ' ' || v2[-1] == '\t')) v2--;
        if (v2 - v1 >= 2 && *v1 == '"' && v2[-1] == '"') {
            v1++;
            v2--;
        }
        if (n2 == n1) continue;
        if (fn(ud, n1, (size_t)(n2 - n1), v1, (size_t)(v2 - v1)) != 0) return;
    }
}

int cookie_name_ok(const char *s, size_t n) {
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || strchr("()<>@,;:\\\"/[]?={}", c)) return 0;
    }
    return 1;
}

int cookie_value_ok(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == '"' || c == ',' || c == ';' || c == '\\') return 0;
    }
    return 1;
}

int cookie_attribute_ok(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || c == ';') return 0;
    }
    return 1;
}
