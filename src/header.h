/* header.h: the request headers a file's answer depends on (RFC 9110): Range, entity tags, dates, Accept-Encoding. */
#ifndef TOKEND_HEADER_H
#define TOKEND_HEADER_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define HEADER_RANGE_NONE 0          /* no Range to honour: absent, malformed, or several ranges */
#define HEADER_RANGE_ONE 1           /* one satisfiable range: *first .. *last */
#define HEADER_RANGE_UNSATISFIABLE 2 /* 416 */

/* Reads a Range header for a representation of size bytes: "bytes=a-b", "bytes=a-" or
 * "bytes=-n". A syntactically invalid header (another unit, "5-1", "a-b") or one of
 * several ranges is ignored (HEADER_RANGE_NONE: the whole file, as RFC 9110 allows); a
 * single range that starts past the end, or a suffix of zero bytes, is unsatisfiable.
 * Numbers of any length are read without overflow. */
int header_range(const char *value, uint64_t size, uint64_t *first, uint64_t *last);

/* Whether an If-Match or If-None-Match list ("*", or entity tags separated by commas)
 * holds etag (a quoted strong tag: "\"abc\""). weak: the weak comparison (W/ prefixes
 * ignored, for If-None-Match); else the strong one (for If-Match and If-Range). A
 * malformed list matches nothing. */
int header_etag_matches(const char *list, const char *etag, int weak);

/* Parses an HTTP date (IMF-fixdate, or the obsolete RFC 850 and asctime forms) into *t.
 * Returns 0, or -1 when it is not one (the header is then ignored). */
int header_date(const char *value, time_t *t);

/* Writes t as an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") into out. */
void header_format_date(time_t t, char out[32]);

/* The weight Accept-Encoding gives coding ("gzip", "br", "identity"): 0 (not acceptable)
 * to 1000, from its own entry or "*". Without an entry: 0, but 1 for identity (acceptable,
 * after everything the client listed). NULL (no header) accepts only identity (1000).
 * Elements with an invalid q are skipped. Also reads Accept for a media type named
 * exactly ("text/html"; wildcards are not that type's entry). */
int header_accepts(const char *accept_encoding, const char *coding);

#endif
