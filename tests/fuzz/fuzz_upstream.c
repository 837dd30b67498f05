/* fuzz_upstream.c: any upstream reply is classified, and the key never reaches the message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <curl/curl.h>

#include "json.h"
#include "upstream.h"

#define KEY "fuzz-KEY-0123456789"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const long statuses[] = { 200, 400, 401, 403, 429, 500, 503, 302 };
    static json_token_reply reply;
    static char token[JSON_TOKEN_MAX];
    char err[800];
    if (size < 1) return 0;
    long status = statuses[data[0] % 8];
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    json_parse_token_reply(body, len, &reply);
    upstream_result r;
    upstream_classify(CURLE_OK, "", status, body, len, -1, 1000, KEY, &r, token, sizeof token, err, sizeof err);
    if (!r.token == !r.error) abort(); /* exactly one of token and error */
    if (r.error && (strstr(r.error, KEY) || !r.kind)) abort();
    if (r.token && status != 200) abort();
    return 0;
}
