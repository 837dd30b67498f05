/* fuzz_relay.c: what the relay reads from the upstream and clients: any answer to its handshake is read within
 * its bytes (an upgrade only with the accept value expected), any streaming message within its bytes, any key. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "ws.h"

#define ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *copy = malloc(size ? size : 1); /* exactly size bytes: reads past them are caught */
    if (!copy) return 0;
    memcpy(copy, data, size);
    ws_answer a;
    int rc = ws_client_answer(copy, size, 2048, ACCEPT, &a);
    if (rc == 1) {
        if (a.header_len < 4 || a.header_len > size || a.header_len > 2048) abort();
        if (a.upgraded && (a.status != 101 || !memmem(copy, a.header_len, ACCEPT, strlen(ACCEPT)))) abort();
        if (a.retry_after < 0 || a.retry_after > 3600) abort();
    } else if (rc != 0 && rc != -1) {
        abort();
    }
    json_message m;
    if (json_parse_message(copy, size, &m) == 0 && (strlen(m.type) >= sizeof m.type || strlen(m.id) >= sizeof m.id))
        abort();
    char accept[WS_ACCEPT_LEN + 1], why[128], key[WS_KEY_LEN + 8];
    size_t n = size < sizeof key - 1 ? size : sizeof key - 1;
    memcpy(key, data, n);
    key[n] = '\0';
    if (ws_check_upgrade("GET", "HTTP/1.1", "websocket", "Upgrade", "13", key, accept, why, sizeof why) == 0 &&
        strlen(accept) != WS_ACCEPT_LEN)
        abort();
    free(copy);
    return 0;
}
