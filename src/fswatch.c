/* fswatch.c: files watched for changes on a loop (inotify; the script polled where inotify fails): the routes script's folder, and the public folder under --dev. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fswatch.h"
#include "log.h"

#define FSWATCH_QUIET_MS 100     /* a batch ends this long after its last change */
#define FSWATCH_MAX_WAIT_MS 1000 /* ... or this long after its first */
#define FSWATCH_POLL_MS 500      /* without inotify: how often the script is looked at */
#define FSWATCH_MAX_DIRS 4096    /* folders watched under the public folder, at most */
#define FSWATCH_MAX_CHANGED 32   /* files named in one batch, at most */
#define FSWATCH_EVENTS \
    (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_ONLYDIR)

/* A watched folder: the script's, a public one (its path relative to the public folder),
 * or both (the script beside the page). */
typedef struct fswatch_dir {
    int wd;
    int script;
    char *rel; /* NULL when it is not under the public folder */
} fswatch_dir;

struct fswatch {
    loop *lp;
    fswatch_fn *fn;
    void *ud;
    int fd; /* inotify's, or -1 when polling */
    char *script;
    char *public_dir;
    fswatch_dir *dirs;
    size_t ndirs, capdirs;
    int full_warned;
    /* the batch being gathered */
    int script_changed;
    char *changed[FSWATCH_MAX_CHANGED];
    size_t nchanged;
    int more; /* files past FSWATCH_MAX_CHANGED */
    uint64_t first_ms;
    loop_timer batch;
    /* polling */
    loop_timer poll;
    struct timespec mtime;
    off_t size;
};

/* The entry for watch descriptor wd, or NULL. */
static fswatch_dir *fswatch_find(fswatch *w, int wd) {
    for (size_t i = 0; i < w->ndirs; i++)
        if (w->dirs[i].wd == wd) return &w->dirs[i];
    return NULL;
}

/* Watches the folder at path: for the script (script = 1) or as rel under the public
 * folder. Returns the entry, or NULL (logged once when the system's limit is reached). */
static fswatch_dir *fswatch_add(fswatch *w, const char *path, int script, const char *rel) {
    if (!script && w->ndirs >= FSWATCH_MAX_DIRS) goto full;
    int wd = inotify_add_watch(w->fd, path, FSWATCH_EVENTS);
    if (wd < 0) {
        if (errno == ENOSPC) goto full;
        return NULL;
    }
    fswatch_dir *d = fswatch_find(w, wd); /* the same folder again: one descriptor */
    if (!d) {
        if (w->ndirs == w->capdirs) {
            size_t cap = w->capdirs ? w->capdirs * 2 : 16;
            fswatch_dir *v = realloc(w->dirs, cap * sizeof *v);
            if (!v) return NULL;
            w->dirs = v;
            w->capdirs = cap;
        }
        d = &w->dirs[w->ndirs++];
        *d = (fswatch_dir){ .wd = wd };
    }
    d->script |= script;
    if (rel && !d->rel) d->rel = strdup(rel);
    return d;
full:
    if (!w->full_warned++)
        log_msg(LOG_WARN,
                "live reload: too many folders to watch under %s (the system's inotify limit, or %d); "
                "changes in the others are not seen",
                w->public_dir, FSWATCH_MAX_DIRS);
    return NULL;
}

/* Names an editor or a tool writes beside the real files, and hidden ones. */
static int fswatch_ignored(const char *name) {
    size_t n = strlen(name);
    if (!n || name[0] == '.' || name[n - 1] == '~' || name[0] == '#') return 1;
    if (strspn(name, "0123456789") == n) return 1; /* vim's 4913 */
    static const char *const suffixes[] = { ".swp", ".swx", ".swo", ".tmp", ".part", ".crdownload" };
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        size_t s = strlen(suffixes[i]);
        if (n > s && strcmp(name + n - s, suffixes[i]) == 0) return 1;
    }
    return 0;
}

/* Watches the public folder at path (rel under it) and the folders below. */
static void fswatch_add_tree(fswatch *w, const char *path, const char *rel, int depth) {
    if (depth > 32 || !fswatch_add(w, path, 0, rel)) return;
    DIR *dir = opendir(path);
    if (!dir) return;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (fswatch_ignored(e->d_name)) continue;
        char sub[PATH_MAX], subrel[PATH_MAX];
        struct stat st;
        if (snprintf(sub, sizeof sub, "%s/%s", path, e->d_name) >= (int)sizeof sub) continue;
        snprintf(subrel, sizeof subrel, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
        if (e->d_type == DT_DIR || (e->d_type == DT_UNKNOWN && lstat(sub, &st) == 0 && S_ISDIR(st.st_mode)))
            fswatch_add_tree(w, sub, subrel, depth + 1);
    }
    closedir(dir);
}

static void fswatch_on_batch(void *ud) {
    fswatch *w = ud;
    char list[FSWATCH_MAX_CHANGED * (PATH_MAX / 8)];
    size_t o = 0;
    list[0] = '\0';
    for (size_t i = 0; i < w->nchanged; i++) {
        int n = snprintf(list + o, sizeof list - o, "%s%s", o ? "\n" : "", w->changed[i]);
        if (n > 0 && (size_t)n < sizeof list - o) o += (size_t)n;
        free(w->changed[i]);
    }
    if (w->more && o + 4 < sizeof list) snprintf(list + o, sizeof list - o, "%s...", o ? "\n" : "");
    int script = w->script_changed;
    w->nchanged = 0;
    w->more = w->script_changed = 0;
    w->first_ms = 0;
    w->fn(w->ud, script, list);
}

/* Adds a change to the batch and sets the batch's end. */
static void fswatch_note(fswatch *w, int script, const char *rel) {
    uint64_t now = loop_now_ms();
    w->script_changed |= script;
    if (rel) {
        size_t i = 0;
        while (i < w->nchanged && strcmp(w->changed[i], rel) != 0) i++;
        if (i == w->nchanged) {
            if (w->nchanged < FSWATCH_MAX_CHANGED && (w->changed[w->nchanged] = strdup(rel))) w->nchanged++;
            else w->more = 1;
        }
    }
    if (!w->first_ms) w->first_ms = now;
    long wait = FSWATCH_QUIET_MS;
    if (now + (uint64_t)wait > w->first_ms + FSWATCH_MAX_WAIT_MS)
        wait = (long)(w->first_ms + FSWATCH_MAX_WAIT_MS - now);
    loop_timer_start(w->lp, &w->batch, wait > 0 ? wait : 0, fswatch_on_batch, w);
}

/* One inotify event. */
static void fswatch_event(fswatch *w, const struct inotify_event *ev) {
    fswatch_dir *d = fswatch_find(w, ev->wd);
    if (!d) return;
    if (ev->mask & (IN_IGNORED | IN_DELETE_SELF)) { /* the folder went away */
        if (ev->mask & IN_IGNORED) {
            free(d->rel);
            *d = w->dirs[--w->ndirs];
        }
        return;
    }
    if (!ev->len || fswatch_ignored(ev->name)) return;
    size_t n = strlen(ev->name);
    int script = d->script && n > 4 && strcmp(ev->name + n - 4, ".lua") == 0;
    char rel[PATH_MAX];
    if (d->rel) snprintf(rel, sizeof rel, "%s%s%s", d->rel, *d->rel ? "/" : "", ev->name);
    if (d->rel && (ev->mask & IN_ISDIR)) {
        if (ev->mask & (IN_CREATE | IN_MOVED_TO)) { /* a new folder: watch it and what it holds */
            char path[PATH_MAX];
            if ((size_t)snprintf(path, sizeof path, "%s/%s", w->public_dir, rel) < sizeof path)
                fswatch_add_tree(w, path, rel, 0);
        } else {
            fswatch_note(w, 0, rel); /* a folder gone, and its files */
        }
        return;
    }
    if (script || d->rel) fswatch_note(w, script, d->rel ? rel : NULL);
}

static void fswatch_on_inotify(void *ud, int fd, unsigned events) {
    fswatch *w = ud;
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    (void)events;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) return;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            fswatch_event(w, ev);
            p += sizeof *ev + ev->len;
        }
    }
}

/* Without inotify: the script's modification time and size, every FSWATCH_POLL_MS. */
static void fswatch_on_poll(void *ud) {
    fswatch *w = ud;
    struct stat st;
    if (stat(w->script, &st) == 0 &&
        (st.st_mtim.tv_sec != w->mtime.tv_sec || st.st_mtim.tv_nsec != w->mtime.tv_nsec || st.st_size != w->size)) {
        w->mtime = st.st_mtim;
        w->size = st.st_size;
        w->fn(w->ud, 1, "");
    }
    loop_timer_start(w->lp, &w->poll, FSWATCH_POLL_MS, fswatch_on_poll, w);
}

/* Falls back to polling the script (why: what failed). */
static void fswatch_poll(fswatch *w, const char *why) {
    struct stat st;
    if (w->fd >= 0) {
        loop_watch(w->lp, w->fd, 0, NULL, NULL);
        close(w->fd);
        w->fd = -1;
    }
    log_msg(LOG_WARN, "cannot watch files with inotify (%s): the script is looked at every %d ms%s", why,
            FSWATCH_POLL_MS, w->public_dir ? ", and pages do not reload when a file of the public folder changes" : "");
    if (!w->script) return;
    if (stat(w->script, &st) == 0) {
        w->mtime = st.st_mtim;
        w->size = st.st_size;
    }
    loop_timer_start(w->lp, &w->poll, FSWATCH_POLL_MS, fswatch_on_poll, w);
}

fswatch *fswatch_create(loop *lp, const char *script, const char *public_dir, fswatch_fn *fn, void *ud, char *err,
                        size_t errlen) {
    fswatch *w = calloc(1, sizeof *w);
    if (!w) goto nomem;
    w->lp = lp;
    w->fn = fn;
    w->ud = ud;
    w->fd = -1;
    if ((script && !(w->script = strdup(script))) || (public_dir && !(w->public_dir = strdup(public_dir)))) goto nomem;
    w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w->fd < 0 || loop_watch(lp, w->fd, LOOP_READ, fswatch_on_inotify, w) < 0) {
        fswatch_poll(w, strerror(errno));
        return w;
    }
    if (script) {
        char folder[PATH_MAX];
        const char *slash = strrchr(script, '/');
        snprintf(folder, sizeof folder, "%.*s", slash ? (int)(slash - script) + (slash == script) : 1,
                 slash ? script : ".");
        if (!fswatch_add(w, folder, 1, NULL)) {
            fswatch_poll(w, strerror(errno));
            return w;
        }
    }
    if (public_dir) fswatch_add_tree(w, public_dir, "", 0);
    return w;
nomem:
    snprintf(err, errlen, "out of memory");
    fswatch_free(w);
    return NULL;
}

void fswatch_free(fswatch *w) {
    if (!w) return;
    if (w->fd >= 0) {
        loop_watch(w->lp, w->fd, 0, NULL, NULL);
        close(w->fd);
    }
    loop_timer_stop(w->lp, &w->batch);
    loop_timer_stop(w->lp, &w->poll);
    for (size_t i = 0; i < w->ndirs; i++) free(w->dirs[i].rel);
    for (size_t i = 0; i < w->nchanged; i++) free(w->changed[i]);
    free(w->dirs);
    free(w->script);
    free(w->public_dir);
    free(w);
}
