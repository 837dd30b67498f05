/* config.h: tokend's settings: one table of names, flags, variables, defaults, ranges and help. */
#ifndef TOKEND_CONFIG_H
#define TOKEND_CONFIG_H

#include <stddef.h>

#include "tokend.h"

/* How a setting's text becomes its field of tokend_config. */
typedef enum config_type {
    CONFIG_STRING, /* const char * (an empty value counts as unset) */
    CONFIG_SECRET, /* const char *, never shown */
    CONFIG_INT,    /* int */
    CONFIG_UINT,   /* unsigned int */
    CONFIG_LONG,   /* long */
    CONFIG_SIZE,   /* size_t */
    CONFIG_MIB,    /* size_t, given in MiB */
    CONFIG_LEVEL,  /* int: debug, info, warn, error */
    CONFIG_FORMAT, /* int: text (0) or json (1) */
    CONFIG_SWITCH, /* int: a flag without a value, 1 when given */
} config_type;

typedef struct config_setting {
    const char *name; /* its name in tokend.server{...}: "max_connections" */
    const char *flag; /* command-line option without "--", or NULL */
    const char *env;  /* environment / .env variable, or NULL */
    config_type type;
    const char *dflt; /* the default as text, NULL when there is none */
    long min, max;    /* range of an integer setting */
    size_t offset;    /* of its field in tokend_config */
    const char *help; /* one line */
} config_setting;

#define CONFIG_MAX_WORKERS 256

/* Every setting, in the order --help, .env.example and the README list them. */
extern const config_setting config_settings[];
extern const size_t config_count;

/* Finds a setting by environment variable, flag or name; NULL when there is none. */
const config_setting *config_by_env(const char *env);
const config_setting *config_by_flag(const char *flag);
const config_setting *config_by_name(const char *name);

/* Sets s's field of cfg from its text. from_flag names the setting --flag in errors
 * rather than by its variable. Strings are not copied. Returns 0, or -1 with err set
 * ("PORT must be an integer between 0 and 65535 (got "x")"). */
int config_set(tokend_config *cfg, const config_setting *s, const char *value, int from_flag, char *err, size_t errlen);

/* Makes dst a copy of src whose strings dst owns (an empty string becomes NULL).
 * Returns 0, or -1 when out of memory (dst is then freed). */
int config_copy(tokend_config *dst, const tokend_config *src);

/* Wipes and frees the strings of a config made by config_copy. */
void config_free(tokend_config *c);

#endif
