/* failure.c: the kinds of failure a call to the outside world ends with, and their names. */
#include "failure.h"

static const char *const failure_names[FAILURE_COUNT] = {
    [FAILURE_NONE] = 0,
    [FAILURE_NO_KEY] = "no_key",
    [FAILURE_UNAUTHORIZED] = "unauthorized",
    [FAILURE_RATE_LIMITED] = "rate_limited",
    [FAILURE_BAD_REQUEST] = "bad_request",
    [FAILURE_UPSTREAM_ERROR] = "upstream_error",
    [FAILURE_BAD_RESPONSE] = "bad_response",
    [FAILURE_TIMEOUT] = "timeout",
    [FAILURE_CONNECT] = "connect",
    [FAILURE_TLS] = "tls",
    [FAILURE_NETWORK] = "network",
    [FAILURE_TOO_LARGE] = "too_large",
};

const char *failure_name(failure_kind k) {
    return k > FAILURE_NONE && k < FAILURE_COUNT ? failure_names[k] : 0;
}
