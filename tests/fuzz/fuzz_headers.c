/* fuzz_headers.c: X-Forwarded-For, trusted-proxy lists and Origin headers from clients. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static policy_proxies *proxies;
    static policy_origins *origins;
    char err[200];
    if (!proxies) {
        const char *pats[] = { "http://localhost:*", "https://*.example.com", "https://app.test" };
        if (policy_proxies_parse("127.0.0.1 10.0.0.0/8 ::1", &proxies, err, sizeof err) < 0) abort();
        if (policy_origins_parse(pats, 3, &origins, err, sizeof err) < 0) abort();
    }
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    /* Split the input: XFF | Origin | Host | proxy list. */
    char *parts[4] = { text, "", "", "" };
    for (int i = 1; i < 4; i++) {
        char *bar = strchr(parts[i - 1], '|');
        if (!bar) break;
        *bar = '\0';
        parts[i] = bar + 1;
    }
    char client[64];
    policy_client_address(proxies, "127.0.0.1", parts[0], client, sizeof client);
    if (strlen(client) >= sizeof client) abort();
    if (strcmp(client, "127.0.0.1") != 0 && !strstr(parts[0], client)) abort();    /* only what was sent */
    int v = policy_origin_check(origins, parts[1], parts[2], "http");
    if (v < POLICY_ORIGIN_DENIED || v > POLICY_ORIGIN_ALLOWED) abort();
    policy_proxies *p = NULL;
    if (policy_proxies_parse(parts[3], &p, err, sizeof err) == 0) {
        policy_proxy_trusted(p, parts[0]);
        policy_proxies_free(p);
    }
    free(text);
    return 0;
}
