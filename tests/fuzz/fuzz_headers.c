/* fuzz_headers.c: X-Forwarded-For, trusted-proxy lists, Host and Origin headers from clients. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "netaddr.h"
#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static netaddr_nets *proxies;
    static policy_origins *origins;
    static policy_hosts *hosts;
    char err[200];
    if (!proxies) {
        const char *pats[] = { "http://localhost:*", "https://*.example.com", "https://app.test" };
        if (netaddr_nets_parse("127.0.0.1 10.0.0.0/8 ::1", &proxies, err, sizeof err) < 0) abort();
        if (policy_hosts_parse("app.example.com *.example.org", "127.0.0.1", &hosts, err, sizeof err) < 0) abort();
        if (policy_origins_parse(pats, 3, &origins, err, sizeof err) < 0) abort();
    }
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    /* Split the input: XFF (lines separated by '\n') | Origin | Host | proxy list. */
    char *parts[4] = { text, "", "", "" };
    for (int i = 1; i < 4; i++) {
        char *bar = strchr(parts[i - 1], '|');
        if (!bar) break;
        *bar = '\0';
        parts[i] = bar + 1;
    }
    char client[NETADDR_TEXT];
    const char *values[8] = { parts[0] };
    size_t nvalues = 1;
    for (char *nl; nvalues < 8 && (nl = strchr(values[nvalues - 1], '\n'));) {
        *nl = '\0';
        values[nvalues++] = nl + 1;
    }
    netaddr_client(proxies, "127.0.0.1", values, nvalues, client, sizeof client);
    netaddr a;
    if (netaddr_parse(client, &a) < 0) abort(); /* always an address */
    int h = policy_host_check(hosts, parts[2]);
    if (h < POLICY_HOST_MALFORMED || h > POLICY_HOST_DENIED) abort();
    if (h == POLICY_HOST_ALLOWED && strstr(parts[2], "attacker") && !strcasestr(parts[2], "localhost") &&
        !strcasestr(parts[2], "example."))
        abort(); /* never a foreign name */
    int v = policy_origin_check(origins, parts[1], parts[2], "http");
    if (v < POLICY_ORIGIN_NONE || v > POLICY_ORIGIN_DENIED) abort();
    netaddr_nets *p = NULL;
    if (netaddr_nets_parse(parts[3], &p, err, sizeof err) == 0) {
        netaddr_nets_contain(p, parts[0]);
        netaddr_nets_free(p);
    }
    policy_hosts *ph = NULL;
    if (policy_hosts_parse(parts[3], parts[1], &ph, err, sizeof err) == 0) policy_hosts_free(ph);
    free(text);
    return 0;
}
