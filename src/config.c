/* config.c: the .env file parser and settings lookup (real environment first). */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define CONFIG_ENV_MAX_FILE (1 << 20)

typedef struct config_entry {
    char *name;
    char *value;
} config_entry;

struct config_env {
    config_entry *entries;
    size_t len, cap;
};

static int config_env_set(config_env *env, const char *name, size_t nlen, const char *value, size_t vlen) {
    for (size_t i = 0; i < env->len; i++) {
        if (strlen(env->entries[i].name) == nlen && memcmp(env->entries[i].name, name, nlen) == 0) {
            char *v = strndup(value, vlen);
            if (!v) return -1;
            explicit_bzero(env->entries[i].value, strlen(env->entries[i].value));
            free(env->entries[i].value);
            env->entries[i].value = v;
            return 0;
        }
    }
    if (env->len == env->cap) {
        size_t cap = env->cap ? env->cap * 2 : 8;
        config_entry *e = realloc(env->entries, cap * sizeof *e);
        if (!e) return -1;
        env->entries = e;
        env->cap = cap;
    }
    config_entry *e = &env->entries[env->len];
    e->name = strndup(name, nlen);
    e->value = strndup(value, vlen);
    if (!e->name || !e->value) {
        free(e->name);
        free(e->value);
        return -1;
    }
    env->len++;
    return 0;
}

/* Parses one value starting at p (line ends at end). Writes the decoded value into out
 * (capacity >= end - p), sets *olen. Returns NULL on success or an error text. */
static const char *config_parse_value(const char *p, const char *end, char *out, size_t *olen) {
    size_t o = 0;
    if (p < end && (*p == '"' || *p == '\'')) {
        char q = *p++;
        for (;;) {
            if (p >= end) return q == '"' ? "unterminated double-quoted value" : "unterminated single-quoted value";
            if (*p == q) { p++; break; }
            if (q == '"' && *p == '\\' && p + 1 < end) {
                p++;
                switch (*p) {
                case 'n': out[o++] = '\n'; break;
                case 't': out[o++] = '\t'; break;
                case 'r': out[o++] = '\r'; break;
                default: out[o++] = *p; break;
                }
                p++;
                continue;
            }
            out[o++] = *p++;
        }
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        if (p < end && *p != '#') return "unexpected text after the closing quote";
    } else {
        const char *start = p;
        while (p < end && !(*p == '#' && (p == start || p[-1] == ' ' || p[-1] == '\t'))) out[o++] = *p++;
        while (o && (out[o - 1] == ' ' || out[o - 1] == '\t')) o--;
    }
    *olen = o;
    return NULL;
}

int config_env_parse(const char *text, size_t len, config_env **out, char *err, size_t errlen) {
    int rc = -1;
    char *buf = NULL;
    config_env *env = calloc(1, sizeof *env);
    *out = NULL;
    if (!env || !(buf = malloc(len + 1))) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    const char *p = text, *end = text + len;
    if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3;  /* UTF-8 byte order mark */
    for (int line = 1; p < end; line++) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) eol = end;
        const char *le = eol;
        if (le > p && le[-1] == '\r') le--;
        while (p < le && (*p == ' ' || *p == '\t')) p++;
        if (p < le && *p != '#') {
            if (le - p > 7 && memcmp(p, "export", 6) == 0 && (p[6] == ' ' || p[6] == '\t')) {
                p += 7;
                while (p < le && (*p == ' ' || *p == '\t')) p++;
            }
            const char *name = p;
            while (p < le && (isalnum((unsigned char)*p) || *p == '_')) p++;
            size_t nlen = (size_t)(p - name);
            while (p < le && (*p == ' ' || *p == '\t')) p++;
            if (nlen == 0 || isdigit((unsigned char)name[0]) || p >= le || *p != '=') {
                snprintf(err, errlen, "line %d: expected NAME=value", line);
                goto out;
            }
            p++;
            while (p < le && (*p == ' ' || *p == '\t')) p++;
            size_t vlen = 0;
            const char *why = config_parse_value(p, le, buf, &vlen);
            if (why) {
                snprintf(err, errlen, "line %d: %s", line, why);
                goto out;
            }
            if (memchr(buf, '\0', vlen)) {
                snprintf(err, errlen, "line %d: NUL byte in value", line);
                goto out;
            }
            if (config_env_set(env, name, nlen, buf, vlen) < 0) {
                snprintf(err, errlen, "out of memory");
                goto out;
            }
        }
        p = eol + 1;
    }
    *out = env;
    env = NULL;
    rc = 0;
out:
    if (buf) {
        explicit_bzero(buf, len + 1);
        free(buf);
    }
    config_env_free(env);
    return rc;
}

int config_env_load(const char *path, config_env **out, char *err, size_t errlen) {
    int rc = -1;
    char *text = NULL;
    size_t len = 0;
    FILE *f = fopen(path, "rb");
    *out = NULL;
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto out;
    }
    text = malloc(CONFIG_ENV_MAX_FILE + 1);
    if (!text) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    len = fread(text, 1, CONFIG_ENV_MAX_FILE + 1, f);
    if (ferror(f) || len > CONFIG_ENV_MAX_FILE) {
        snprintf(err, errlen, "%s: %s", path, ferror(f) ? "read error" : "larger than 1 MiB");
        goto out;
    }
    char perr[200];
    if (config_env_parse(text, len, out, perr, sizeof perr) < 0) {
        snprintf(err, errlen, "%s: %s", path, perr);
        goto out;
    }
    rc = 0;
out:
    if (text) {
        explicit_bzero(text, len);
        free(text);
    }
    if (f) fclose(f);
    return rc;
}

const char *config_env_get(const config_env *env, const char *name) {
    if (!env) return NULL;
    for (size_t i = 0; i < env->len; i++)
        if (strcmp(env->entries[i].name, name) == 0) return env->entries[i].value;
    return NULL;
}

const char *config_lookup(const config_env *env, const char *name) {
    const char *v = getenv(name);
    return v ? v : config_env_get(env, name);
}

size_t config_env_count(const config_env *env) {
    return env ? env->len : 0;
}

const char *config_env_name(const config_env *env, size_t i) {
    return env && i < env->len ? env->entries[i].name : NULL;
}

void config_env_free(config_env *env) {
    if (!env) return;
    for (size_t i = 0; i < env->len; i++) {
        explicit_bzero(env->entries[i].value, strlen(env->entries[i].value));
        free(env->entries[i].name);
        free(env->entries[i].value);
    }
    free(env->entries);
    free(env);
}
