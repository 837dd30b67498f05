/* cookie.h: HTTP cookies: the pairs of a Cookie header, and what a Set-Cookie may carry. */
#ifndef TOKEND_COOKIE_H
#define TOKEND_COOKIE_H

#include <stddef.h>

/* Called for each pair of a Cookie header, in order (the value without its quotes, if
 * quoted). Returns 0 to go on. */
typedef int cookie_fn(void *ud, const char *name, size_t nlen, const char *value, size_t vlen);

/* Splits "a=1; b=2" into its pairs; items without '=' or with an empty name are skipped. */
void cookie_parse(const char *header, cookie_fn *fn, void *ud);

/* 1 when s[0..n) is a cookie name (an RFC 6265 token: no separators, spaces or control
 * characters), 0 otherwise. */
int cookie_name_ok(const char *s, size_t n);

/* 1 when s[0..n) is a cookie value (RFC 6265 cookie-octets: no spaces, quotes, commas,
 * semicolons, backslashes or control characters), 0 otherwise. */
int cookie_value_ok(const char *s, size_t n);

/* 1 when an attribute value (Path, Domain) holds no ';' and no control character. */
int cookie_attribute_ok(const char *s, size_t n);

#endif
