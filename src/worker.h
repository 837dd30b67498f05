/* worker.h: a worker's world (its event loop, HTTP front and clients) and what the workers of a server share. */
#ifndef TOKEND_WORKER_H
#define TOKEND_WORKER_H

#include <stddef.h>

#include "http.h"
#include "lhost.h"
#include "tokend.h"

typedef struct worker_group worker_group;
typedef struct worker worker;

/* How a group is opened. */
#define WORKER_GROUP_SERVE 0 /* a server or the Lua module: connects to Redis */
#define WORKER_GROUP_CHECK 1 /* tokend --check: loads scripts, connects to nothing */
#define WORKER_GROUP_MINT 2  /* tokend_mint: one upstream call, no script, no Redis */

/* Opens what the workers of one server (or the Lua module) share: a copy of cfg, the
 * streaming endpoints, the .env file scripts read, the rate limiters' buckets, the shared
 * dictionaries and token pools, the proxies, Host names and connection counts of the
 * HTTP fronts, and where Redis is. libcurl is initialised once per process first.
 * Checks cfg (ranges, files) and, when serving, that Redis can be reached: a Redis that
 * refuses or does not answer yet is warned of; a wrong password fails. Returns NULL with
 * err set on failure. */
worker_group *worker_group_open(const tokend_config *cfg, int how, char *err, size_t errlen);

/* Closes a group whose workers are all closed. NULL is allowed. */
void worker_group_close(worker_group *g);

/* The group's copy of the settings (its strings live as long as the group). */
const tokend_config *worker_group_config(const worker_group *g);

/* The .env file scripts read with tokend.env, or NULL. */
struct envfile *worker_group_env(const worker_group *g);

/* 1 when the group serves HTTPS (a certificate, or the development CA's under dev). */
int worker_group_tls(const worker_group *g);

/* Under dev, what tells the workers' open pages to reload; NULL otherwise. */
struct devserver_hub *worker_group_devserver(const worker_group *g);

typedef struct worker_options {
    int id;                     /* 0-based; scripts see tokend.config.worker = id + 1 */
    int workers;                /* how many the server runs (tokend.config.workers) */
    int port;                   /* the port served, for tokend.config.port */
    int listen_fd;              /* a listening socket to serve (taken, also on failure), or -1 */
    int listen_tls;             /* 1: listen_fd speaks HTTPS (HTTPS alone) */
    int tls_listen_fd;          /* a second listening socket, speaking HTTPS beside listen_fd's HTTP
                                       (taken, also on failure); 0 or -1: none */
    int tls_port;               /* the port that speaks HTTPS, for tokend.config.tls_port; 0: none */
    http_dispatch_fn *dispatch; /* answers the requests of the HTTP front */
    void *dispatch_ud;
} worker_options;

/* Opens a worker of group g: its loop, outgoing HTTP client, token client, Redis
 * connection (when configured and serving) and, with a listening socket, its HTTP front
 * and relayed sessions.
 * Returns NULL with err set on failure. */
worker *worker_open(worker_group *g, const worker_options *o, char *err, size_t errlen);

/* Closes a worker: calls in flight are cancelled, relayed sessions cut, requests still open
 * answered 503.
 * Lua hosts that use its world must be freed first. NULL is allowed. */
void worker_close(worker *w);

/* Relayed sessions running on the worker (their handshakes included). */
size_t worker_sessions(const worker *w);

/* Ends the relayed sessions as the server stops (1001 to their clients); the loop must
 * turn for their closes to go out. */
void worker_end_sessions(worker *w);

loop *worker_loop(const worker *w);

/* The worker's HTTP front, or NULL when it serves none. */
http_front *worker_http(const worker *w);

/* What the scripts' library calls reach on this worker. */
const lhost_world *worker_world(const worker *w);

/* Settings a Lua host of this worker is made with (limits, the script, the world). */
void worker_host_options(const worker *w, lhost_options *o);

#endif
