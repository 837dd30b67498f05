/* url.c: percent-decoding, query-string parsing and the AssemblyAI endpoint URLs. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <curl/curl.h>

#include "url.h"

static int url_hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes in[0..inlen) into out; plus_is_space maps '+' to ' '. Returns the decoded
 * length or a URL_ERR_* code. Does not NUL-terminate. allow_nul permits %00. */
static long url_unescape(const char *in, size_t inlen, char *out, size_t outcap, int plus_is_space, int allow_nul) {
    size_t o = 0;
    for (size_t i = 0; i < inlen; i++) {
        int c = (unsigned char)in[i];
        if (c == '%') {
            if (i + 2 >= inlen) return URL_ERR_MALFORMED;
            int hi = url_hexval((unsigned char)in[i + 1]), lo = url_hexval((unsigned char)in[i + 2]);
            if (hi < 0 || lo < 0) return URL_ERR_MALFORMED;
            c = hi * 16 + lo;
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        if (c == 0 && !allow_nul) return URL_ERR_MALFORMED;
        if (o >= outcap) return URL_ERR_TOO_LONG;
        out[o++] = (char)c;
    }
    return (long)o;
}

int url_decode_path(const char *in, size_t inlen, char *out, size_t outcap, size_t *outlen) {
    if (outcap == 0) return URL_ERR_TOO_LONG;
    long n = url_unescape(in, inlen, out, outcap - 1, 0, 0);
    if (n < 0) return (int)n;
    out[n] = '\0';
    if (outlen) *outlen = (size_t)n;
    return URL_OK;
}

int url_parse_query(const char *q, size_t qlen, char *scratch, size_t max_args, url_query_fn *fn, void *ud) {
    size_t count = 0, i = 0, o = 0;
    while (i < qlen) {
        size_t end = i;
        while (end < qlen && q[end] != '&') end++;
        if (end > i) {
            if (++count > max_args) return URL_ERR_TOO_MANY;
            size_t eq = i;
            while (eq < end && q[eq] != '=') eq++;
            char *name = scratch + o;
            long nlen = url_unescape(q + i, eq - i, name, eq - i, 1, 1);
            if (nlen < 0) return URL_ERR_MALFORMED;
            name[nlen] = '\0';
            o += (size_t)nlen + 1;
            char *value = scratch + o;
            long vlen = 0;
            if (eq < end) {
                vlen = url_unescape(q + eq + 1, end - eq - 1, value, end - eq - 1, 1, 1);
                if (vlen < 0) return URL_ERR_MALFORMED;
            }
            value[vlen] = '\0';
            o += (size_t)vlen + 1;
            if (fn && fn(ud, name, (size_t)nlen, value, (size_t)vlen) != 0) break;
        }
        i = end + 1;
    }
    return (int)count;
}

int url_parse_port(const char *s, size_t n) {
    int port = 0;
    if (n == 0 || n > 5) return -1;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i])) return -1;
        port = port * 10 + (s[i] - '0');
    }
    return port >= 1 && port <= 65535 ? port : -1;
}

/* Checks the host and port of base (rest: after the scheme; the authority is its first
 * hostlen bytes) as strictly as a user would expect, then by libcurl's parser. Returns 0,
 * or -1 with err set. */
static int url_check_authority(const char *base, const char *what, const char *rest, size_t hostlen, char *err,
                               size_t errlen) {
    const char *end = rest + hostlen, *port = NULL, *close = NULL;
    CURLU *u = NULL;
    CURLUcode code = CURLUE_OUT_OF_MEMORY;
    int rc = -1;
    if (rest[0] == '[' && (!(close = memchr(rest, ']', hostlen)) || (close + 1 != end && close[1] != ':'))) {
        snprintf(err, errlen, "the %s \"%s\" has a bad host", what, base);
        goto out;
    }
    port = close ? (close + 1 < end ? close + 2 : NULL) : memchr(rest, ':', hostlen);
    if (port && !close) port++;
    if (port && url_parse_port(port, (size_t)(end - port)) < 0) {
        snprintf(err, errlen, "the %s \"%s\" has a bad port (1..65535, digits only)", what, base);
        goto out;
    }
    if (!(u = curl_url()) || (code = curl_url_set(u, CURLUPART_URL, base, 0)) != CURLUE_OK) {
        snprintf(err, errlen, "the %s \"%s\" is not valid: %s", what, base, curl_url_strerror(code));
        goto out;
    }
    rc = 0;
out:
    curl_url_cleanup(u);
    return rc;
}

/* The endpoints of an AssemblyAI API at base: <base><token_path> and ws(s)://<host><ws_path>
 * (what names the setting in errors). */
static int url_endpoints_at(const char *base, const char *what, const char *token_path, const char *ws_path,
                            url_endpoints *out, char *err, size_t errlen) {
    const char *rest, *ws_scheme;
    memset(out, 0, sizeof *out);
    if (!base || !*base) {
        snprintf(err, errlen, "the %s is empty", what);
        return URL_ERR_MALFORMED;
    }
    if (strncasecmp(base, "https://", 8) == 0) {
        rest = base + 8;
        ws_scheme = "wss";
    } else if (strncasecmp(base, "http://", 7) == 0) {
        rest = base + 7;
        ws_scheme = "ws";
    } else {
        snprintf(err, errlen, "the %s \"%s\" must start with https:// or http://", what, base);
        return URL_ERR_MALFORMED;
    }
    size_t len = strlen(rest);
    while (len && rest[len - 1] == '/') len--;
    size_t hostlen = strcspn(rest, "/");
    if (hostlen > len) hostlen = len;
    if (hostlen == 0) {
        snprintf(err, errlen, "the %s \"%s\" has no host", what, base);
        return URL_ERR_MALFORMED;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)rest[i];
        if (c <= ' ' || c == 0x7f || c == '?' || c == '#' || (c == '@' && i < hostlen) || c == '\\') {
            snprintf(err, errlen, "the %s \"%s\" may not contain spaces, a query, a fragment or user info", what, base);
            return URL_ERR_MALFORMED;
        }
    }
    if (url_check_authority(base, what, rest, hostlen, err, errlen) < 0) return URL_ERR_MALFORMED;
    if (len + 8 >= sizeof out->base) {
        snprintf(err, errlen, "the %s is too long", what);
        return URL_ERR_MALFORMED;
    }
    int scheme_len = ws_scheme[2] ? 5 : 4; /* "https" or "http" */
    snprintf(out->base, sizeof out->base, "%.*s://%.*s", scheme_len, ws_scheme[2] ? "https" : "http", (int)len, rest);
    for (char *p = out->base; *p && *p != ':'; p++) *p = (char)tolower((unsigned char)*p);
    snprintf(out->token_url, sizeof out->token_url, "%s%s", out->base, token_path);
    snprintf(out->websocket_url, sizeof out->websocket_url, "%s://%.*s%s", ws_scheme, (int)len, rest, ws_path);
    return URL_OK;
}

int url_streaming_endpoints(const char *base, url_endpoints *out, char *err, size_t errlen) {
    return url_endpoints_at(base, "streaming URL", "/v3/token", "/v3/ws", out, err, errlen);
}

int url_agent_endpoints(const char *base, url_endpoints *out, char *err, size_t errlen) {
    return url_endpoints_at(base, "Voice Agent URL", "/v1/token", "/v1/ws", out, err, errlen);
}

int url_regions(const char *text, url_region *out, size_t *n, char *err, size_t errlen) {
    char base[sizeof out->endpoints.base];
    *n = 0;
    const char *p = text ? text : "";
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        if (!*p) break;
        size_t item = strcspn(p, ","), nlen = strcspn(p, "=");
        while (item && (p[item - 1] == ' ' || p[item - 1] == '\t')) item--;
        if (nlen >= item || nlen == 0 || nlen >= sizeof out->name) {
            snprintf(err, errlen, "expected name=URL items (a name of 1..%d letters, digits, '-' or '_'), got \"%.*s\"",
                     (int)sizeof out->name - 1, (int)item, p);
            return URL_ERR_MALFORMED;
        }
        for (size_t i = 0; i < nlen; i++) {
            if (!isalnum((unsigned char)p[i]) && p[i] != '-' && p[i] != '_') {
                snprintf(err, errlen, "the region name \"%.*s\" may hold only letters, digits, '-' and '_'", (int)nlen,
                         p);
                return URL_ERR_MALFORMED;
            }
        }
        if (*n == URL_REGION_MAX) {
            snprintf(err, errlen, "at most %d regions", URL_REGION_MAX);
            return URL_ERR_TOO_MANY;
        }
        url_region *r = &out[*n];
        snprintf(r->name, sizeof r->name, "%.*s", (int)nlen, p);
        for (size_t i = 0; i < *n; i++) {
            if (strcmp(out[i].name, r->name) == 0) {
                snprintf(err, errlen, "the region %s is named twice", r->name);
                return URL_ERR_MALFORMED;
            }
        }
        size_t blen = item - nlen - 1;
        if (blen >= sizeof base) blen = sizeof base - 1;
        snprintf(base, sizeof base, "%.*s", (int)blen, p + nlen + 1);
        int rc = url_endpoints_at(base, "region URL", "/v3/token", "/v3/ws", &r->endpoints, err, errlen);
        if (rc != URL_OK) return rc;
        (*n)++;
        p += item;
    }
    return URL_OK;
}
