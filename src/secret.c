/* secret.c: the process's secrets (tokend.secret): values held in C memory, out of the environment and the logs. */
#define _GNU_SOURCE
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envfile.h"
#include "log.h"
#include "secret.h"

/* Secrets live as long as the process: handles in any Lua state, of any server or of the
 * Lua module, point at them. They are never removed, so lookups hand out plain pointers. */
struct secret {
    char *name;
    char *value;
    size_t len;
    secret *next;
};

static pthread_mutex_t secret_lock = PTHREAD_MUTEX_INITIALIZER;
static secret *secret_list;

/* The secret named name (secret_lock held), or NULL. */
static secret *secret_lookup(const char *name) {
    for (secret *s = secret_list; s; s = s->next)
        if (strcmp(s->name, name) == 0) return s;
    return NULL;
}

const secret *secret_find(const char *name) {
    pthread_mutex_lock(&secret_lock);
    const secret *s = secret_lookup(name);
    pthread_mutex_unlock(&secret_lock);
    return s;
}

/* Checks a value and adds the secret (secret_lock held). Returns it, or NULL with err. */
static secret *secret_add(const char *name, const char *value, char *err, size_t errlen) {
    size_t len = strlen(value);
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)value[i] < 0x20 || value[i] == 0x7f) {
            snprintf(err, errlen, "the secret %s holds a control character or a line break", name);
            return NULL;
        }
    }
    if (len < SECRET_MIN_BYTES) {
        snprintf(err, errlen, "the secret %s is shorter than %d bytes (too short to be told apart from other text)",
                 name, SECRET_MIN_BYTES);
        return NULL;
    }
    secret *s = calloc(1, sizeof *s);
    if (!s || !(s->name = strdup(name)) || !(s->value = strdup(value)) || log_add_secret(value) < 0) {
        if (s && s->value) {
            explicit_bzero(s->value, len);
            free(s->value);
        }
        if (s) free(s->name);
        free(s);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->len = len;
    s->next = secret_list;
    secret_list = s;
    return s;
}

static int secret_name_ok(const char *name) {
    size_t n = strlen(name);
    if (!n || n > SECRET_NAME_MAX || isdigit((unsigned char)name[0])) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && name[i] != '_') return 0;
    return 1;
}

int secret_declare(const char *name, struct envfile *env, const secret **out, char *err, size_t errlen) {
    int rc = -1;
    if (!secret_name_ok(name)) {
        snprintf(err, errlen, "a secret's name is a variable name (letters, digits, '_'), got \"%.64s\"", name);
        return -1;
    }
    pthread_mutex_lock(&secret_lock);
    secret *s = secret_lookup(name);
    const char *in_file = env ? envfile_read(env, name) : NULL; /* read: not reported as unknown */
    if (!s) {
        const char *v = getenv(name);
        if (!v || !*v) v = in_file;
        if (!v || !*v) {
            snprintf(err, errlen, "the secret %s is not set (in the environment or .env)", name);
            goto out;
        }
        if (!(s = secret_add(name, v, err, errlen))) goto out;
        if (envfile_forget(name) < 0) {
            snprintf(err, errlen, "out of memory");
            goto out;
        }
    }
    envfile_wipe(env, name);
    *out = s;
    rc = 0;
out:
    pthread_mutex_unlock(&secret_lock);
    return rc;
}

int secret_adopt(const char *name, const char *value) {
    char err[160];
    int rc = 0;
    if (!value || !*value) return 0;
    pthread_mutex_lock(&secret_lock);
    if (!secret_lookup(name) && !secret_add(name, value, err, sizeof err)) rc = strcmp(err, "out of memory") ? 0 : -1;
    pthread_mutex_unlock(&secret_lock);
    return rc;
}

void secret_wipe_env(struct envfile *env) {
    if (!env) return;
    pthread_mutex_lock(&secret_lock);
    for (secret *s = secret_list; s; s = s->next) envfile_wipe(env, s->name);
    pthread_mutex_unlock(&secret_lock);
}

const char *secret_name(const secret *s) {
    return s->name;
}

const char *secret_value(const secret *s, size_t *len) {
    if (len) *len = s->len;
    return s->value;
}
