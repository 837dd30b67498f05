/* failure.h: the kinds of failure a call to the outside world ends with, and their names. */
#ifndef TOKEND_FAILURE_H
#define TOKEND_FAILURE_H

/* The order is the order of the name table and of the metrics. */
typedef enum failure_kind {
    FAILURE_NONE = 0,
    FAILURE_NO_KEY,         /* no API key is configured */
    FAILURE_UNAUTHORIZED,   /* the upstream refused the key (401, 403) */
    FAILURE_RATE_LIMITED,   /* the upstream said 429 */
    FAILURE_BAD_REQUEST,    /* the upstream said 400 */
    FAILURE_UPSTREAM_ERROR, /* the upstream said 5xx */
    FAILURE_BAD_RESPONSE,   /* an answer that is not what was asked for */
    FAILURE_TIMEOUT,        /* no answer within the deadline */
    FAILURE_CONNECT,        /* connection refused, name not resolved */
    FAILURE_TLS,            /* certificate not verified, handshake failed */
    FAILURE_NETWORK,        /* connection reset or dropped mid-answer */
    FAILURE_TOO_LARGE,      /* the answer is larger than allowed */
    FAILURE_COUNT
} failure_kind;

/* "no_key", "unauthorized", ..., "too_large"; NULL for FAILURE_NONE. */
const char *failure_name(failure_kind k);

#endif
