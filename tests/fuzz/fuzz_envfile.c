/* fuzz_envfile.c: the .env parser accepts or refuses with a line number, never crashes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    config_env *env = NULL;
    char err[200] = "";
    if (config_env_parse((const char *)data, size, &env, err, sizeof err) == 0) {
        for (size_t i = 0; i < config_env_count(env); i++) {
            const char *name = config_env_name(env, i);
            if (!name || !*name || !config_env_get(env, name)) abort();
        }
        config_env_free(env);
    } else if (strncmp(err, "line ", 5) != 0 && strcmp(err, "out of memory") != 0) {
        abort();
    }
    return 0;
}
