/* devserver.h: the development server's own paths (/__tokend/): live reload of open pages (an event stream each, told by the server's file watcher) and the development CA's certificate. */
#ifndef TOKEND_DEVSERVER_H
#define TOKEND_DEVSERVER_H

#include <stddef.h>

#include "http.h"
#include "loop.h"

/* What tokend --dev adds to the HTML pages it serves: the live-reload client, a file of the
 * page's own origin (the Content-Security-Policy keeps script-src 'self'). */
#define DEVSERVER_SCRIPT_TAG "<script src=\"/__tokend/livereload.js\" defer></script>"

typedef struct devserver_hub devserver_hub; /* the workers' stations, for the file watcher */
typedef struct devserver devserver;         /* a worker's station: its pages' streams */

/* Creates the hub of a server's workers; ca_pem (borrowed, may be NULL) is the development
 * CA's certificate to serve. NULL when out of memory. */
devserver_hub *devserver_hub_create(const char *ca_pem);

/* Frees a hub whose stations are all closed. NULL is allowed. */
void devserver_hub_free(devserver_hub *h);

/* Tells every open page to reload: changed lists the files that changed under the public
 * folder (one per line; all style sheets: the pages swap them in place), "" for the routes
 * script. Safe from any thread: each station sends on its own loop. */
void devserver_hub_reload(devserver_hub *h, const char *changed);

/* Opens a worker's station on its loop lp (a stream every 15 s keeps proxies from closing
 * it). Returns NULL with err set on failure. */
devserver *devserver_open(devserver_hub *h, loop *lp, char *err, size_t errlen);

/* Closes a station; its pages' streams must be over (the worker's HTTP front freed first).
 * NULL is allowed. */
void devserver_close(devserver *d);

/* Answers the reserved paths: /__tokend/livereload (the event stream), /__tokend/livereload.js
 * (the client), /__tokend/ca.crt (the development CA, to loopback clients only; 404 for
 * others, as for any other /__tokend/ path). Returns 1 when req was one of them. */
int devserver_serve(devserver *d, http_request *req);

#endif
