/* fuzz_envfile.c: the .env parser accepts or refuses with a line number, never crashes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "envfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    envfile *env = NULL;
    char err[200] = "";
    if (envfile_parse((const char *)data, size, &env, err, sizeof err) == 0) {
        for (size_t i = 0; i < envfile_count(env); i++) {
            const char *name = envfile_name(env, i);
            if (!name || !*name || !envfile_get(env, name)) abort();
        }
        envfile_free(env);
    } else if (strncmp(err, "line ", 5) != 0 && strcmp(err, "out of memory") != 0) {
        abort();
    }
    return 0;
}
