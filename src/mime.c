/* mime.c: media types by file extension: the system's /etc/mime.types, with a built-in fallback. */
#define _GNU_SOURCE
#include <ctype.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mime.h"

#define MIME_SLOTS 8192 /* a power of two, well above Debian's ~1,500 extensions */
#define MIME_MAX_EXT 32
#define MIME_DEFAULT "application/octet-stream"

typedef struct mime_entry {
    char ext[MIME_MAX_EXT]; /* lower case; "" = free */
    const char *type;       /* with its charset; owned by mime_types */
} mime_entry;

static mime_entry mime_table[MIME_SLOTS];
static char **mime_types; /* every type string, for the table's entries */
static size_t mime_ntypes, mime_nexts;
static pthread_once_t mime_once = PTHREAD_ONCE_INIT;
static const char *mime_path = "/etc/mime.types";

/* The web's common types: used when the system has no mime.types, and for the extensions
 * it does not list. */
static const struct {
    const char *ext, *type;
} mime_builtin[] = {
    { "html", "text/html" },        { "htm", "text/html" },
    { "css", "text/css" },          { "js", "text/javascript" },
    { "mjs", "text/javascript" },   { "json", "application/json" },
    { "map", "application/json" },  { "txt", "text/plain" },
    { "md", "text/markdown" },      { "xml", "application/xml" },
    { "svg", "image/svg+xml" },     { "png", "image/png" },
    { "jpg", "image/jpeg" },        { "jpeg", "image/jpeg" },
    { "gif", "image/gif" },         { "webp", "image/webp" },
    { "avif", "image/avif" },       { "ico", "image/vnd.microsoft.icon" },
    { "wasm", "application/wasm" }, { "wav", "audio/wav" },
    { "mp3", "audio/mpeg" },        { "ogg", "audio/ogg" },
    { "webm", "video/webm" },       { "mp4", "video/mp4" },
    { "woff", "font/woff" },        { "woff2", "font/woff2" },
    { "pdf", "application/pdf" },   { "webmanifest", "application/manifest+json" },
    { "srt", "text/plain" },        { "vtt", "text/vtt" },
    { "csv", "text/csv" },
};

static uint64_t mime_hash(const char *ext) {
    uint64_t h = 1469598103934665603ULL;
    for (; *ext; ext++) h = (h ^ (unsigned char)tolower((unsigned char)*ext)) * 1099511628211ULL;
    return h;
}

/* The slot of ext: its entry, or the free slot where it would go. */
static mime_entry *mime_slot(const char *ext) {
    size_t i = (size_t)mime_hash(ext) & (MIME_SLOTS - 1);
    while (mime_table[i].ext[0] && strcasecmp(mime_table[i].ext, ext) != 0) i = (i + 1) & (MIME_SLOTS - 1);
    return &mime_table[i];
}

/* Keeps a type, with "; charset=utf-8" for text; NULL when out of memory. */
static const char *mime_keep(const char *type, size_t len) {
    char **v = realloc(mime_types, (mime_ntypes + 1) * sizeof *v);
    if (!v) return NULL;
    mime_types = v;
    int text = len > 5 && strncasecmp(type, "text/", 5) == 0;
    char *s = malloc(len + (text ? 16 : 1));
    if (!s) return NULL;
    memcpy(s, type, len);
    strcpy(s + len, text ? "; charset=utf-8" : "");
    mime_types[mime_ntypes++] = s;
    return s;
}

/* Maps ext to type (replacing an earlier mapping); ignores what does not fit. */
static void mime_add(const char *ext, size_t elen, const char *type) {
    char key[MIME_MAX_EXT];
    if (!type || elen == 0 || elen >= sizeof key || mime_nexts >= MIME_SLOTS / 2) return;
    for (size_t i = 0; i < elen; i++) key[i] = (char)tolower((unsigned char)ext[i]);
    key[elen] = '\0';
    mime_entry *e = mime_slot(key);
    if (!e->ext[0]) {
        memcpy(e->ext, key, elen + 1);
        mime_nexts++;
    }
    e->type = type;
}

/* Reads a mime.types file: "type ext ext ..." lines, '#' comments. */
static void mime_read(FILE *f) {
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        char *p = line;
        while (isspace((unsigned char)*p)) p++;
        if (*p == '#' || !*p) continue;
        size_t tlen = strcspn(p, " \t\r\n");
        const char *type = NULL;
        if (!memchr(p, '/', tlen) || tlen > 200) continue;
        for (char *q = p + tlen; *q;) {
            while (isspace((unsigned char)*q)) q++;
            size_t elen = strcspn(q, " \t\r\n");
            if (!elen) break;
            if (!type && !(type = mime_keep(p, tlen))) return;
            mime_add(q, elen, type);
            q += elen;
        }
    }
}

static void mime_init(void) {
    for (size_t i = 0; i < sizeof mime_builtin / sizeof mime_builtin[0]; i++)
        mime_add(mime_builtin[i].ext, strlen(mime_builtin[i].ext),
                 mime_keep(mime_builtin[i].type, strlen(mime_builtin[i].type)));
    FILE *f = fopen(mime_path, "re");
    if (!f) return;
    mime_read(f);
    fclose(f);
}

int mime_load(const char *path) {
    if (path) mime_path = path;
    pthread_once(&mime_once, mime_init);
    return (int)mime_nexts;
}

const char *mime_type(const char *name) {
    const char *dot = strrchr(name, '.'), *slash = strrchr(name, '/');
    pthread_once(&mime_once, mime_init);
    if (!dot || (slash && dot < slash) || strlen(dot + 1) >= MIME_MAX_EXT) return MIME_DEFAULT;
    const mime_entry *e = mime_slot(dot + 1);
    return e->ext[0] ? e->type : MIME_DEFAULT;
}

int mime_compressible(const char *t) {
    static const char *const kinds[] = {
        "text/",
        "application/json",
        "application/javascript",
        "application/xml",
        "application/wasm",
        "image/svg+xml",
        "application/manifest+json",
        "image/vnd.microsoft.icon",
        NULL,
    };
    for (int i = 0; kinds[i]; i++)
        if (strncasecmp(t, kinds[i], strlen(kinds[i])) == 0) return 1;
    size_t n = strcspn(t, ";"); /* any +json or +xml type */
    return (n > 5 && (strncasecmp(t + n - 5, "+json", 5) == 0)) || (n > 4 && strncasecmp(t + n - 4, "+xml", 4) == 0);
}
