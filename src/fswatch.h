/* fswatch.h: files watched for changes on a loop (inotify; the script polled where inotify fails): the routes script's folder, and the public folder under --dev. */
#ifndef TOKEND_FSWATCH_H
#define TOKEND_FSWATCH_H

#include <stddef.h>

#include "loop.h"

typedef struct fswatch fswatch;

/* A batch of changes, 100 ms after the last one (at most a second after the first):
 * script is 1 when a .lua file of the script's folder changed; changed lists the files of
 * the public folder that changed, relative to it, one per line ("" when none). */
typedef void fswatch_fn(void *ud, int script, const char *changed);

/* Watches script's folder (its .lua files: the script and the modules beside it; NULL for
 * none) and, when public_dir is not NULL, every folder under it (new ones too; dot-files and
 * editors' temporary files are left out). fn(ud, ...) runs on lp. Where inotify cannot be
 * used, the script alone is polled every 500 ms and the log says so. Returns NULL with
 * err set when out of memory. */
fswatch *fswatch_create(loop *lp, const char *script, const char *public_dir, fswatch_fn *fn, void *ud, char *err,
                        size_t errlen);

/* Stops watching. NULL is allowed. */
void fswatch_free(fswatch *w);

#endif
