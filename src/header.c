/* header.c: the request headers a file's answer depends on (RFC 9110): Range, entity tags, dates, Accept-Encoding. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "header.h"

#define HEADER_OWS(c) ((c) == ' ' || (c) == '\t')

/* Reads a run of digits at *p as a number, saturating at UINT64_MAX. Returns 0 when there
 * is no digit. */
static int header_number(const char **p, uint64_t *out) {
    const char *s = *p;
    uint64_t v = 0;
    if (!isdigit((unsigned char)*s)) return 0;
    for (; isdigit((unsigned char)*s); s++) {
        unsigned d = (unsigned)(*s - '0');
        v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
    }
    *p = s;
    *out = v;
    return 1;
}

int header_range(const char *value, uint64_t size, uint64_t *first, uint64_t *last) {
    const char *p = value;
    uint64_t a = 0, b = 0;
    int has_a, has_b;
    if (!p || strncasecmp(p, "bytes", 5) != 0) return HEADER_RANGE_NONE;
    p += 5;
    while (HEADER_OWS(*p)) p++;
    if (*p++ != '=') return HEADER_RANGE_NONE;
    while (HEADER_OWS(*p)) p++;
    has_a = header_number(&p, &a);
    if (*p++ != '-') return HEADER_RANGE_NONE;
    has_b = header_number(&p, &b);
    while (HEADER_OWS(*p)) p++;
    if (*p) return HEADER_RANGE_NONE; /* several ranges, or garbage: the whole file */
    if (!has_a && !has_b) return HEADER_RANGE_NONE;
    if (has_a && has_b && b < a) return HEADER_RANGE_NONE; /* invalid: ignored */
    if (!has_a) {                                          /* the last b bytes */
        if (b == 0 || size == 0) return HEADER_RANGE_UNSATISFIABLE;
        *first = b >= size ? 0 : size - b;
        *last = size - 1;
        return HEADER_RANGE_ONE;
    }
    if (a >= size) return HEADER_RANGE_UNSATISFIABLE;
    *first = a;
    *last = has_b && b < size - 1 ? b : size - 1;
    return HEADER_RANGE_ONE;
}

/* The next entity tag of a list at *p: its opaque part (quotes included) and whether it
 * was weak. Returns 0 at the end of the list, -1 when it is malformed. */
static int header_next_etag(const char **p, const char **tag, size_t *len, int *weak) {
    const char *s = *p;
    while (HEADER_OWS(*s) || *s == ',') s++;
    if (!*s) return 0;
    *weak = 0;
    if (s[0] == 'W' && s[1] == '/') {
        *weak = 1;
        s += 2;
    }
    if (*s != '"') return -1;
    const char *end = strchr(s + 1, '"');
    if (!end) return -1;
    *tag = s;
    *len = (size_t)(end + 1 - s);
    s = end + 1;
    while (HEADER_OWS(*s)) s++;
    if (*s && *s != ',') return -1;
    *p = s;
    return 1;
}

int header_etag_matches(const char *list, const char *etag, int weak) {
    const char *p = list, *tag;
    size_t len, elen = strlen(etag);
    int tag_weak, rc;
    if (!list) return 0;
    while (HEADER_OWS(*p)) p++;
    if (p[0] == '*') {
        const char *rest = p + 1;
        while (HEADER_OWS(*rest)) rest++;
        return *rest == '\0';
    }
    while ((rc = header_next_etag(&p, &tag, &len, &tag_weak)) > 0)
        if ((weak || !tag_weak) && len == elen && memcmp(tag, etag, len) == 0) return 1;
    return 0;
}

static const char *const header_months[] = {
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
};
static const char *const header_days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian; m 1..12). */
static long long header_days_from_civil(long long y, unsigned m, unsigned d) {
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

static int header_month(const char *s) {
    for (int i = 0; i < 12; i++)
        if (strncmp(s, header_months[i], 3) == 0) return i + 1;
    return 0;
}

/* The digits at s[0..n) as a number, or -1. */
static int header_digits(const char *s, int n) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i])) return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* IMF-fixdate, what every current client sends: "Sun, 06 Nov 1994 08:49:37 GMT". */
static int header_fixdate(const char *v, int *d, char mon[4], int *y, int *h, int *mi, int *s) {
    if (strlen(v) != 29 || v[3] != ',' || v[4] != ' ' || v[7] != ' ' || v[11] != ' ' || v[16] != ' ' || v[19] != ':' ||
        v[22] != ':' || v[25] != ' ' || strcmp(v + 26, "GMT") != 0)
        return -1;
    memcpy(mon, v + 8, 3);
    mon[3] = '\0';
    *d = header_digits(v + 5, 2);
    *y = header_digits(v + 12, 4);
    *h = header_digits(v + 17, 2);
    *mi = header_digits(v + 20, 2);
    *s = header_digits(v + 23, 2);
    return 0;
}

int header_date(const char *value, time_t *t) {
    char mon[4] = "", day_name[16] = "", zone[4] = "";
    int d = 0, y = 0, h = 0, mi = 0, s = 0, n = 0;
    if (!value || strlen(value) > 64) return -1;
    if (header_fixdate(value, &d, mon, &y, &h, &mi, &s) == 0) {
        /* IMF-fixdate */
    } else if (sscanf(value, "%15[A-Za-z], %2d-%3s-%2d %2d:%2d:%2d %3s%n", day_name, &d, mon, &y, &h, &mi, &s, zone,
                      &n) == 8 &&
               !value[n] && strcmp(zone, "GMT") == 0) {
        y += y < 70 ? 2000 : 1900; /* RFC 850, two-digit year */
    } else if (sscanf(value, "%3[A-Za-z] %3s %2d %2d:%2d:%2d %4d%n", day_name, mon, &d, &h, &mi, &s, &y, &n) == 7 &&
               !value[n]) {
        /* asctime */
    } else {
        return -1;
    }
    int m = header_month(mon);
    if (!m || d < 1 || d > 31 || y < 1970 || h > 23 || mi > 59 || s > 60 || h < 0 || mi < 0 || s < 0) return -1;
    *t = (time_t)(header_days_from_civil(y, (unsigned)m, (unsigned)d) * 86400 + h * 3600 + mi * 60 + s);
    return 0;
}

void header_format_date(time_t t, char out[32]) {
    static _Thread_local time_t last = -1; /* a file's date, asked for again and again */
    static _Thread_local char last_text[32];
    struct tm tm;
    if (t == last) {
        memcpy(out, last_text, 32);
        return;
    }
    gmtime_r(&t, &tm);
    snprintf(out, 32, "%s, %02d %s %04d %02d:%02d:%02d GMT", header_days[tm.tm_wday], tm.tm_mday,
             header_months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    memcpy(last_text, out, 32);
    last = t;
}

/* A qvalue ("1", "0.5", "0.125") in thousandths; -1 when it is not one. */
static int header_qvalue(const char *s, size_t n) {
    int q = 0, scale = 1000;
    if (n == 0 || (s[0] != '0' && s[0] != '1')) return -1;
    q = (s[0] - '0') * 1000;
    if (n == 1) return q;
    if (s[1] != '.' || n > 5) return -1;
    for (size_t i = 2; i < n; i++) {
        if (!isdigit((unsigned char)s[i])) return -1;
        scale /= 10;
        q += (s[i] - '0') * scale;
    }
    return q > 1000 ? -1 : q;
}

int header_accepts(const char *ae, const char *coding) {
    int own = -1, any = -1, identity = strcasecmp(coding, "identity") == 0;
    size_t clen = strlen(coding);
    if (!ae) return identity ? 1000 : 0;
    for (const char *p = ae; *p;) {
        while (HEADER_OWS(*p) || *p == ',') p++;
        const char *name = p;
        while (*p && *p != ',' && *p != ';' && !HEADER_OWS(*p)) p++;
        size_t nlen = (size_t)(p - name);
        int q = 1000;
        while (HEADER_OWS(*p)) p++;
        while (*p == ';') { /* parameters: only q counts */
            p++;
            while (HEADER_OWS(*p)) p++;
            const char *param = p;
            while (*p && *p != ',' && *p != ';') p++;
            const char *end = p;
            while (end > param && HEADER_OWS(end[-1])) end--;
            if ((param[0] == 'q' || param[0] == 'Q') && param + 1 < end && param[1] == '=')
                q = header_qvalue(param + 2, (size_t)(end - param - 2));
        }
        if (q < 0 || nlen == 0) continue; /* an invalid q: the element is skipped */
        int is_gzip_alias = strcasecmp(coding, "gzip") == 0 && nlen == 6 && strncasecmp(name, "x-gzip", 6) == 0;
        if ((nlen == clen && strncasecmp(name, coding, nlen) == 0) || is_gzip_alias) own = own > q ? own : q;
        else if (nlen == 1 && name[0] == '*') any = q;
    }
    if (own >= 0) return own;
    if (any >= 0) return any;
    return identity; /* acceptable unless excluded, and then the least preferred */
}
