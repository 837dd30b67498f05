/* envfile.c: the .env file parser and the environment: lookups, and a variable forgotten. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "envfile.h"

#define ENVFILE_MAX_FILE (1 << 20)

typedef struct envfile_entry {
    char *name;
    char *value;
    atomic_int read; /* read through envfile_read */
} envfile_entry;

struct envfile {
    envfile_entry *entries;
    size_t len, cap;
};

static int envfile_set(envfile *env, const char *name, size_t nlen, const char *value, size_t vlen) {
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
        envfile_entry *e = realloc(env->entries, cap * sizeof *e);
        if (!e) return -1;
        env->entries = e;
        env->cap = cap;
    }
    envfile_entry *e = &env->entries[env->len];
    e->name = strndup(name, nlen);
    e->value = strndup(value, vlen);
    atomic_init(&e->read, 0);
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
static const char *envfile_parse_value(const char *p, const char *end, char *out, size_t *olen) {
    size_t o = 0;
    if (p < end && (*p == '"' || *p == '\'')) {
        char q = *p++;
        for (;;) {
            if (p >= end) return q == '"' ? "unterminated double-quoted value" : "unterminated single-quoted value";
            if (*p == q) {
                p++;
                break;
            }
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

int envfile_parse(const char *text, size_t len, envfile **out, char *err, size_t errlen) {
    int rc = -1;
    char *buf = NULL;
    envfile *env = calloc(1, sizeof *env);
    *out = NULL;
    if (!env || !(buf = malloc(len + 1))) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    const char *p = text, *end = text + len;
    if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3; /* UTF-8 byte order mark */
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
            const char *why = envfile_parse_value(p, le, buf, &vlen);
            if (why) {
                snprintf(err, errlen, "line %d: %s", line, why);
                goto out;
            }
            if (memchr(buf, '\0', vlen)) {
                snprintf(err, errlen, "line %d: NUL byte in value", line);
                goto out;
            }
            if (envfile_set(env, name, nlen, buf, vlen) < 0) {
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
    envfile_free(env);
    return rc;
}

int envfile_load(const char *path, envfile **out, char *err, size_t errlen) {
    int rc = -1;
    char *text = NULL;
    size_t len = 0;
    FILE *f = fopen(path, "rb");
    struct stat st;
    *out = NULL;
    if (!f) {
        int e = errno;
        int dangling = e == ENOENT && lstat(path, &st) == 0 && S_ISLNK(st.st_mode);
        snprintf(err, errlen, "%s: %s", path,
                 dangling ? "a link to nothing (a settings file was expected)" : strerror(e));
        goto out;
    }
    if (fstat(fileno(f), &st) == 0 && !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: %s, not a settings file", path, S_ISDIR(st.st_mode) ? "a folder" : "not a file");
        goto out;
    }
    text = malloc(ENVFILE_MAX_FILE + 1);
    if (!text) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    len = fread(text, 1, ENVFILE_MAX_FILE + 1, f);
    if (ferror(f) || len > ENVFILE_MAX_FILE) {
        snprintf(err, errlen, "%s: %s", path, ferror(f) ? "read error" : "larger than 1 MiB");
        goto out;
    }
    char perr[200];
    if (envfile_parse(text, len, out, perr, sizeof perr) < 0) {
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

int envfile_world_readable(const char *path, unsigned int *mode) {
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    *mode = (unsigned int)(st.st_mode & 07777);
    return (st.st_mode & S_IROTH) != 0;
}

const char *envfile_get(const envfile *env, const char *name) {
    if (!env) return NULL;
    for (size_t i = 0; i < env->len; i++)
        if (strcmp(env->entries[i].name, name) == 0) return env->entries[i].value;
    return NULL;
}

const char *envfile_read(envfile *env, const char *name) {
    for (size_t i = 0; env && i < env->len; i++) {
        if (strcmp(env->entries[i].name, name) == 0) {
            atomic_store(&env->entries[i].read, 1);
            return env->entries[i].value;
        }
    }
    return NULL;
}

void envfile_wipe(envfile *env, const char *name) {
    for (size_t i = 0; env && i < env->len; i++) {
        if (strcmp(env->entries[i].name, name) != 0) continue;
        explicit_bzero(env->entries[i].value, strlen(env->entries[i].value));
        env->entries[i].value[0] = '\0';
    }
}

int envfile_was_read(envfile *env, size_t i) {
    return env && i < env->len && atomic_load(&env->entries[i].read);
}

const char *envfile_lookup(const envfile *env, const char *name) {
    const char *v = getenv(name);
    return v ? v : envfile_get(env, name);
}

size_t envfile_count(const envfile *env) {
    return env ? env->len : 0;
}

const char *envfile_name(const envfile *env, size_t i) {
    return env && i < env->len ? env->entries[i].name : NULL;
}

void envfile_free(envfile *env) {
    if (!env) return;
    for (size_t i = 0; i < env->len; i++) {
        explicit_bzero(env->entries[i].value, strlen(env->entries[i].value));
        free(env->entries[i].name);
        free(env->entries[i].value);
    }
    free(env->entries);
    free(env);
}

/* Reads the bounds of the process's initial environment block, which the kernel shows as
 * /proc/self/environ (fields 50 and 51 of /proc/self/stat). Returns 0 or -1. */
static int envfile_block(unsigned long *start, unsigned long *end) {
    char buf[4096];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (!p) return -1;
    p++;
    for (int field = 3; field <= 51; field++) {
        char *tok = strtok_r(field == 3 ? p : NULL, " ", &p);
        if (!tok) return -1;
        if (field == 50) *start = strtoul(tok, NULL, 10);
        if (field == 51) *end = strtoul(tok, NULL, 10);
    }
    return *start && *end > *start ? 0 : -1;
}

/* 1 once the environment was moved out of the initial block (the block is then ours to
 * rewrite: nothing points into it). */
static atomic_int envfile_detached;

/* Writes the block [start, end) anew from its own entries without those of name, zero-
 * filled at the end. Nothing may point into it. */
static void envfile_block_drop(char *block, size_t room, const char *name, size_t nlen) {
    size_t in = 0, o = 0;
    while (in < room && block[in]) {
        size_t len = strnlen(block + in, room - in);
        int drop = len > nlen && strncmp(block + in, name, nlen) == 0 && block[in + nlen] == '=';
        if (!drop) {
            memmove(block + o, block + in, len);
            block[o + len] = '\0';
            o += len + 1;
        }
        in += len + 1;
    }
    if (o < room) memset(block + o, 0, room - o);
}

/* Moves every variable but name out of the initial block (setenv copies), then writes the
 * block anew from those copies. Returns 0 or -1 (no memory). */
static int envfile_detach(const char *name, size_t nlen, char *block, size_t room) {
    size_t count = 0, kept = 0;
    while (environ[count]) count++;
    char **copies = calloc(count + 1, sizeof *copies);
    if (!copies) return -1;
    for (size_t i = 0; i < count; i++) {
        if (strncmp(environ[i], name, nlen) == 0 && environ[i][nlen] == '=') continue;
        if (!(copies[kept++] = strdup(environ[i]))) goto fail;
    }
    if (clearenv() != 0) goto fail;
    for (size_t i = 0; i < kept; i++) {
        char *eq = strchr(copies[i], '=');
        if (!eq) continue;
        *eq = '\0';
        setenv(copies[i], eq + 1, 1);
        *eq = '=';
    }
    size_t o = 0;
    for (size_t i = 0; i < kept; i++) {
        size_t len = strlen(copies[i]) + 1;
        if (o + len > room) break;
        memcpy(block + o, copies[i], len);
        o += len;
    }
    memset(block + o, 0, room - o);
    for (size_t i = 0; i < kept; i++) free(copies[i]);
    free(copies);
    atomic_store(&envfile_detached, 1);
    return 0;
fail:
    for (size_t i = 0; i < kept; i++) free(copies[i]);
    free(copies);
    return -1;
}

int envfile_forget(const char *name) {
    unsigned long start = 0, end = 0;
    size_t nlen = strlen(name);
    char *value = getenv(name);
    if (value) explicit_bzero(value, strlen(value));
    /* Only the block the kernel shows is rewritten: under a tool that builds the
     * program's environment elsewhere (valgrind), the variable is only unset. */
    int inside = 0;
    if (envfile_block(&start, &end) == 0)
        for (size_t i = 0; environ && environ[i] && !inside; i++)
            inside = (unsigned long)environ[i] >= start && (unsigned long)environ[i] < end;
    if (inside) return envfile_detach(name, nlen, (char *)start, end - start);
    if (value && unsetenv(name) != 0) return -1;
    /* Moved out before (the first call, at start): the block still lists the variable. */
    if (atomic_load(&envfile_detached) && start) envfile_block_drop((char *)start, end - start, name, nlen);
    return 0;
}
