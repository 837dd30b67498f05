/* fuzz_regions.c: the data-zone list (ASSEMBLYAI_REGION_URLS) parses into at most URL_REGION_MAX named, checked endpoints. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    url_region regions[URL_REGION_MAX];
    size_t n = 0;
    char err[256];
    memcpy(text, data, size);
    text[size] = '\0';
    int rc = url_regions(text, regions, &n, err, sizeof err);
    if (n > URL_REGION_MAX) abort();
    for (size_t i = 0; rc == URL_OK && i < n; i++) {
        if (!regions[i].name[0] || strncmp(regions[i].endpoints.token_url, "http", 4) != 0 ||
            strncmp(regions[i].endpoints.websocket_url, "ws", 2) != 0)
            abort();
    }
    free(text);
    return 0;
}
