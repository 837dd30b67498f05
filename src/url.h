/* url.h: percent-decoding, query-string parsing and the AssemblyAI endpoint URLs. */
#ifndef TOKEND_URL_H
#define TOKEND_URL_H

#include <stddef.h>

#define URL_OK 0
#define URL_ERR_MALFORMED (-1) /* bad %-escape, NUL byte or bad syntax */
#define URL_ERR_TOO_MANY (-2)  /* more query arguments than allowed */
#define URL_ERR_TOO_LONG (-3)  /* does not fit the output */

/* Decodes the %-escapes of a URL path into out (outcap bytes, NUL-terminated).
 * '+' is kept as is. Fails with URL_ERR_MALFORMED on a bad escape or an encoded or raw
 * NUL byte, URL_ERR_TOO_LONG when out is too small. */
int url_decode_path(const char *in, size_t inlen, char *out, size_t outcap, size_t *outlen);

/* Called for each query argument with decoded name and value (each NUL-terminated,
 * possibly containing NUL bytes, lengths given). Returns 0 to go on. */
typedef int url_query_fn(void *ud, const char *name, size_t nlen, const char *value, size_t vlen);

/* Scratch bytes url_parse_query needs for a query of qlen bytes: every argument takes its
 * decoded name and value plus two terminators, and "a&b&c" has one argument per 2 bytes. */
#define URL_QUERY_SCRATCH(qlen) (2 * (qlen) + 2)

/* Parses "a=1&b=two+words&c" into decoded pairs ('+' is a space, a missing '=' gives "").
 * scratch must hold URL_QUERY_SCRATCH(qlen) bytes. Returns the number of arguments,
 * URL_ERR_MALFORMED on a bad escape, URL_ERR_TOO_MANY past max_args. */
int url_parse_query(const char *q, size_t qlen, char *scratch, size_t max_args, url_query_fn *fn, void *ud);

/* A port written in a URL: 1 to 5 digits, 1..65535 (no sign, no spaces). Returns it,
 * or -1. */
int url_parse_port(const char *s, size_t n);

/* The two endpoints derived from ASSEMBLYAI_STREAMING_URL. */
typedef struct url_endpoints {
    char base[512];          /* normalised base, without trailing slash */
    char token_url[600];     /* <base>/v3/token */
    char websocket_url[600]; /* ws[s]://<host>[:port][/prefix]/v3/ws */
} url_endpoints;

/* Derives the endpoints from an http:// or https:// base URL (optional port and path
 * prefix; no query, fragment or user info), checked by libcurl's URL parser as the
 * calls will use it. Returns URL_OK, or URL_ERR_MALFORMED with a reason in err. */
int url_streaming_endpoints(const char *base, url_endpoints *out, char *err, size_t errlen);

/* The endpoints of AssemblyAI's Voice Agent API from its base URL (checked as above):
 * <base>/v1/token and ws[s]://<host>[:port][/prefix]/v1/ws. */
int url_agent_endpoints(const char *base, url_endpoints *out, char *err, size_t errlen);

/* A named data zone of the streaming API: "eu" and its endpoints. */
#define URL_REGION_MAX 8
typedef struct url_region {
    char name[24];
    url_endpoints endpoints;
} url_region;

/* Parses "us=https://streaming.us.assemblyai.com, eu=https://..." (NULL or "" for none)
 * into out (URL_REGION_MAX entries), each URL checked as the streaming URL is; *n gets the
 * count. Returns URL_OK, or URL_ERR_MALFORMED / URL_ERR_TOO_MANY with err set. */
int url_regions(const char *text, url_region *out, size_t *n, char *err, size_t errlen);

#endif
