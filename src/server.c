/* server.c: the server's lifecycle: listening sockets, worker threads, start, reload and stop. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "devserver.h"
#include "envfile.h"
#include "fswatch.h"
#include "http.h"
#include "lcroute.h"
#include "lhost.h"
#include "linit.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "server.h"
#include "tokend.h"
#include "upstream.h"
#include "worker.h"

#define SERVER_EXTRA_TURNS 4        /* libmicrohttpd turns per loop wake-up, at most */
#define SERVER_SESSIONS_END_MS 2000 /* for relayed sessions' closes to go out as the server stops */
#define SERVER_STOP_MARGIN_S 3      /* past the drain time, how long a worker may take to return */
#define SERVER_JOIN_POLL_MS 200

/* A Lua host replaced by a reload, kept until its last request is answered. */
typedef struct server_retired {
    struct server_retired *next;
    lhost *lua;
} server_retired;

typedef struct server_worker {
    tokend_server *srv;
    int id;
    worker *w; /* its loop, HTTP front and clients */
    lhost *lua;
    pthread_t thread;
    int started;
    int reload_seen; /* the reload generation this worker has loaded */
    server_retired *retired;
} server_worker;

struct tokend_server {
    worker_group *group;      /* the settings and what the workers share */
    const tokend_config *cfg; /* the group's */
    int port;
    int tls_port;   /* the port that speaks HTTPS (port itself when alone), or 0 */
    int tls_beside; /* HTTPS on tls_port beside HTTP on port */
    int nworkers;
    server_worker *workers;
    atomic_int stopping;
    atomic_int reload_gen;
    lcroute **c_routes; /* routes in C, re-added on every reload */
    size_t n_c_routes;
    lhost *attached; /* the Lua module's host, or NULL */
    int stuck;       /* a worker did not return when stopped: nothing is freed */
    fswatch *watch;  /* --watch and --dev, on worker 1's loop */
};

void tokend_set_log_sink(tokend_log_fn *sink, void *ud) {
    log_set_sink(sink, ud);
}

/* Binds a listening socket. reuse_port shares the port between workers. Returns the fd
 * or -1 with err set; *port gets the bound port. */
static int server_listen(const char *hostname, int *port, int reuse_port, char *err, size_t errlen) {
    struct addrinfo hints, *res = NULL;
    char portstr[16];
    int fd = -1, one = 1;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(portstr, sizeof portstr, "%d", *port);
    int gai = getaddrinfo(hostname, portstr, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "cannot resolve host \"%s\": %s", hostname, gai_strerror(gai));
        return -1;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) goto fail;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) goto fail;
    if (reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) goto fail;
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0) goto fail;
    if (listen(fd, 4096) < 0) goto fail;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        char serv[16];
        if (getnameinfo((struct sockaddr *)&ss, sl, NULL, 0, serv, sizeof serv, NI_NUMERICSERV) == 0)
            *port = atoi(serv);
    }
    freeaddrinfo(res);
    return fd;
fail:
    snprintf(err, errlen, "cannot listen on %s:%s: %s", hostname, portstr, strerror(errno));
    if (fd >= 0) close(fd);
    freeaddrinfo(res);
    return -1;
}

/* Checks that no other process holds the port (SO_REUSEPORT would let two servers share
 * it silently). Returns 0 or -1 with err set. */
static int server_port_free(const char *hostname, int port, char *err, size_t errlen) {
    int fd = server_listen(hostname, &port, 0, err, errlen);
    if (fd < 0) return -1;
    close(fd);
    return 0;
}

/* Loads the script into a new Lua host for worker sw, with the routes written in C.
 * Returns 0 or -1 with err set. */
static int server_worker_load(server_worker *sw, lhost **out, char *err, size_t errlen) {
    tokend_server *srv = sw->srv;
    lhost_options ho;
    worker_host_options(sw->w, &ho);
    ho.open_module = linit_push_module;
    if (lhost_create(&ho, out, err, errlen) < 0) return -1;
    for (size_t i = 0; i < srv->n_c_routes; i++) {
        if (lcroute_add(*out, srv->c_routes[i], err, errlen) < 0) {
            lhost_free(*out);
            *out = NULL;
            return -1;
        }
    }
    return 0;
}

static void server_worker_dispatch(void *ud, http_request *req) {
    server_worker *sw = ud;
    lhost_dispatch(sw->lua, req);
}

/* Swaps in a freshly loaded script; the old host retires until its requests are done. */
static void server_worker_reload(server_worker *w) {
    char err[4096];
    lhost *fresh = NULL;
    if (w->srv->attached) {
        log_msg(LOG_WARN, "reload ignored: an embedded server's routes belong to its application");
        return;
    }
    if (server_worker_load(w, &fresh, err, sizeof err) < 0) {
        metrics_reload(0);
        if (w->id == 0) log_msg(LOG_ERROR, "reload failed, the previous script keeps serving: %s", err);
        return;
    }
    server_retired *r = malloc(sizeof *r);
    if (!r) {
        lhost_free(fresh);
        metrics_reload(0);
        if (w->id == 0) log_msg(LOG_ERROR, "reload failed: out of memory");
        return;
    }
    lhost_retire(w->lua); /* its timers stop; its requests in flight finish */
    r->lua = w->lua;
    r->next = w->retired;
    w->retired = r;
    w->lua = fresh;
    metrics_reload(1);
    if (w->id == 0) log_msg(LOG_INFO, "reloaded %s", w->srv->cfg->script);
}

/* Frees the retired hosts whose requests have all been answered (all == 1: every one). */
static void server_worker_reap(server_worker *w, int all) {
    for (server_retired **pp = &w->retired; *pp;) {
        server_retired *r = *pp;
        if (all || lhost_running(r->lua) == 0) {
            *pp = r->next;
            lhost_free(r->lua);
            free(r);
        } else {
            pp = &r->next;
        }
    }
}

/* --watch and --dev: a change of the script (or a module beside it) reloads every worker;
 * under --dev, open pages then reload too (after the workers: each loads the script before
 * it reads the requests that come with its wake-up). */
static void server_on_files(void *ud, int script, const char *changed) {
    tokend_server *srv = ud;
    devserver_hub *pages = worker_group_devserver(srv->group);
    if (script) {
        log_msg(LOG_INFO, "%s changed", srv->attached ? "a script" : srv->cfg->script);
        tokend_server_reload(srv);
    }
    if (pages) devserver_hub_reload(pages, script ? "" : changed);
}

/* Creates a worker's loop, clients and Lua host (not its HTTP front). */

/* Opens worker sw's world on its listening socket fd (taken) and loads its Lua host (or
 * serves the attached one). Returns 0 or -1 with err set. */
static int server_worker_init(tokend_server *srv, server_worker *sw, int id, int fd, int tls_fd, char *err,
                              size_t errlen) {
    sw->srv = srv;
    sw->id = id;
    worker_options wo = { .id = id,
                          .workers = srv->nworkers,
                          .port = srv->port,
                          .listen_fd = fd,
                          .listen_tls = srv->tls_port && !srv->tls_beside,
                          .tls_listen_fd = tls_fd,
                          .tls_port = srv->tls_beside ? srv->tls_port
                                  : srv->tls_port     ? srv->port
                                                      : 0,
                          .dispatch = server_worker_dispatch,
                          .dispatch_ud = sw };
    if (!(sw->w = worker_open(srv->group, &wo, err, errlen))) return -1;
    if (srv->attached) { /* the module's: in the server's world, still loading its routes */
        sw->lua = srv->attached;
        lhost_enter(sw->lua, worker_world(sw->w));
        return 0;
    }
    return server_worker_load(sw, &sw->lua, err, errlen);
}

static void server_worker_end_sessions(server_worker *w);

static void server_worker_free(server_worker *sw) {
    if (sw->lua) server_worker_end_sessions(sw); /* their hooks run on the Lua hosts */
    server_worker_reap(sw, 1);                   /* cancels what the Lua hosts wait for */
    if (sw->srv && sw->srv->attached && sw->lua == sw->srv->attached) {
        lhost_serve(sw->lua, NULL); /* the module's: back to its own world */
        sw->lua = NULL;
    }
    lhost_free(sw->lua);
    worker_close(sw->w);
}

/* Notes the names of the .env file that are neither settings nor read by the script (a
 * typo would otherwise go unnoticed). */
static void server_report_unknown(tokend_server *srv) {
    envfile *env = worker_group_env(srv->group);
    for (size_t i = 0; i < envfile_count(env); i++) {
        const char *name = envfile_name(env, i);
        if (!config_by_env(name) && !envfile_was_read(env, i))
            log_msg(LOG_INFO, "note: %s sets %s, which tokend does not use and the script does not read",
                    srv->cfg->env_file, name);
    }
}

/* --watch and --dev: worker 1 watches the script's folder, and under --dev the public one. */
static int server_watch_files(tokend_server *srv, char *err, size_t errlen) {
    const tokend_config *c = srv->cfg;
    if (!c->watch_script && !c->dev) return 0;
    srv->watch = fswatch_create(worker_loop(srv->workers[0].w), srv->attached ? NULL : c->script,
                                c->dev && c->public_dir && *c->public_dir ? c->public_dir : NULL, server_on_files, srv,
                                err, errlen);
    return srv->watch ? 0 : -1;
}

/* Where HTTPS goes: nowhere without a certificate; alone on the port with one; beside HTTP
 * on tls_port when given, else under dev on the next port (a free one when the port is
 * 0). Returns 0, or -1 with err. */
static int server_choose_tls_port(tokend_server *srv, char *err, size_t errlen) {
    const tokend_config *c = srv->cfg;
    if (!worker_group_tls(srv->group)) return 0;
    srv->tls_beside = c->tls_port || c->dev;
    srv->tls_port = c->tls_port ? c->tls_port : c->dev && srv->port ? srv->port + 1 : 0;
    if (!srv->tls_beside) srv->tls_port = -1; /* known once the port is bound */
    if (c->dev && !c->tls_port && srv->port == 65535) {
        snprintf(err, errlen, "--dev serves HTTPS on the port after --port, and 65535 has none: give --tls-port");
        return -1;
    }
    return 0;
}

int tokend_server_create(const tokend_config *cfg, tokend_server **out, char *err, size_t errlen) {
    return server_create_attached(cfg, NULL, out, err, errlen);
}

int server_stopping(const tokend_server *srv) {
    return atomic_load(&srv->stopping);
}

int server_create_attached(const tokend_config *cfg, lhost *attached, tokend_server **out, char *err, size_t errlen) {
    tokend_server *srv = calloc(1, sizeof *srv);
    *out = NULL;
    if (!srv) {
        snprintf(err, errlen, "out of memory");
        return TOKEND_ERR;
    }
    tokend_config own = *cfg;
    if (attached) own.workers = 1;
    if (!(srv->group = worker_group_open(&own, WORKER_GROUP_SERVE, err, errlen))) goto fail;
    srv->cfg = worker_group_config(srv->group);
    srv->attached = attached;
    log_configure(srv->cfg->log_level, srv->cfg->log_json);
    log_set_secret(srv->cfg->api_key);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    srv->nworkers = srv->cfg->workers > 0
            ? srv->cfg->workers
            : (int)(cores > 0 ? (cores < CONFIG_MAX_WORKERS ? cores : CONFIG_MAX_WORKERS) : 1);
    if (!(srv->workers = calloc((size_t)srv->nworkers, sizeof *srv->workers))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    srv->port = cfg->port;
    if (server_choose_tls_port(srv, err, errlen) < 0) goto fail;
    if (srv->port != 0 && server_port_free(srv->cfg->host, srv->port, err, errlen) < 0) goto fail;
    if (srv->tls_beside && srv->tls_port && server_port_free(srv->cfg->host, srv->tls_port, err, errlen) < 0) goto fail;
    for (int i = 0; i < srv->nworkers; i++) {
        int fd = server_listen(srv->cfg->host, &srv->port, 1, err, errlen), tls_fd = -1;
        if (fd >= 0 && srv->tls_beside &&
            (tls_fd = server_listen(srv->cfg->host, &srv->tls_port, 1, err, errlen)) < 0) {
            close(fd);
            goto fail;
        }
        if (fd < 0 || server_worker_init(srv, &srv->workers[i], i, fd, tls_fd, err, errlen) < 0) goto fail;
    }
    if (srv->tls_port && !srv->tls_beside) srv->tls_port = srv->port; /* HTTPS alone: port 0 is known now */
    server_report_unknown(srv);
    if (server_watch_files(srv, err, errlen) < 0) goto fail;
    *out = srv;
    return TOKEND_OK;
fail:
    tokend_server_free(srv);
    return TOKEND_ERR;
}
static int server_worker_turn(server_worker *w, long max_wait_ms) {
    tokend_server *srv = w->srv;
    long wait = http_timeout_ms(worker_http(w->w));
    if (max_wait_ms >= 0 && (wait < 0 || wait > max_wait_ms)) wait = max_wait_ms;
    if (loop_run_once(worker_loop(w->w), wait) < 0) return -1;
    /* A reload asked for (the wake-up that ended the wait) applies before the requests
     * that arrived with it are read: they see the new script. */
    int gen = atomic_load(&srv->reload_gen);
    if (gen != w->reload_seen) {
        w->reload_seen = gen;
        server_worker_reload(w);
    }
    /* libmicrohttpd's turn, then the timers its handlers armed for now (curl starting a
     * call); again while it has work at once (a connection that sent its answer reads the
     * next request), without a wait in epoll between. Bounded: the loop's descriptors
     * get their turn. */
    for (int i = 0; i < SERVER_EXTRA_TURNS; i++) {
        http_run(worker_http(w->w));
        loop_run_due(worker_loop(w->w));
        if (http_timeout_ms(worker_http(w->w)) != 0) break;
    }
    if (w->retired) server_worker_reap(w, 0);
    return 0;
}

/* Ends the worker's relayed sessions (1001) and turns its loop for their closes to go
 * out, for a moment at most: what is left then is cut. */
static void server_worker_end_sessions(server_worker *w) {
    if (!w->w || worker_sessions(w->w) == 0) return;
    worker_end_sessions(w->w);
    uint64_t deadline = loop_now_ms() + SERVER_SESSIONS_END_MS;
    while (worker_sessions(w->w) > 0 && loop_now_ms() < deadline) server_worker_turn(w, 50);
}

static void *server_worker_main(void *arg) {
    server_worker *w = arg;
    tokend_server *srv = w->srv;
    while (!atomic_load(&srv->stopping)) {
        if (server_worker_turn(w, -1) < 0) {
            log_msg(LOG_ERROR, "worker %d: event loop failed: %s", w->id + 1, strerror(errno));
            break;
        }
    }
    /* Drain: stop accepting, let requests in flight and relayed sessions finish within the
     * drain time; the sessions still open then are closed with 1001 (going away). */
    http_quiesce(worker_http(w->w));
    uint64_t deadline = loop_now_ms() + (uint64_t)srv->cfg->drain_timeout_s * 1000u;
    while ((http_in_flight(worker_http(w->w)) > 0 || worker_sessions(w->w) > 0) && loop_now_ms() < deadline)
        server_worker_turn(w, 100);
    if (worker_sessions(w->w) > 0)
        log_msg(LOG_INFO, "worker %d: %zu relayed sessions still open after the drain time: closing them", w->id + 1,
                worker_sessions(w->w));
    server_worker_end_sessions(w);
    if (http_in_flight(worker_http(w->w)) > 0)
        log_msg(LOG_WARN, "worker %d: %zu requests still running after the drain time", w->id + 1,
                http_in_flight(worker_http(w->w)));
    return NULL;
}

int tokend_server_route(tokend_server *srv, const char *method, const char *path, tokend_route_fn *fn, void *ud,
                        char *err, size_t errlen) {
    lcroute *r = calloc(1, sizeof *r);
    lcroute **v = realloc(srv->c_routes, (srv->n_c_routes + 1) * sizeof *v);
    if (v) srv->c_routes = v;
    if (!r || !v || !method || !path || !fn || strlen(method) >= sizeof r->method || !(r->path = strdup(path))) {
        snprintf(err, errlen, !r || !v ? "out of memory" : "bad route arguments");
        goto fail;
    }
    for (size_t i = 0; method[i]; i++) r->method[i] = (char)toupper((unsigned char)method[i]);
    r->fn = fn;
    r->ud = ud;
    for (int i = 0; i < srv->nworkers; i++) {
        if (lcroute_add(srv->workers[i].lua, r, err, errlen) < 0) {
            if (i == 0) goto fail; /* bad route: no worker has it */
            snprintf(err + strlen(err), errlen - strlen(err), " (worker %d)", i + 1);
            return TOKEND_ERR;
        }
    }
    srv->c_routes[srv->n_c_routes++] = r;
    return TOKEND_OK;
fail:
    if (r) free(r->path);
    free(r);
    return TOKEND_ERR;
}

int tokend_server_fd(const tokend_server *srv) {
    return srv->nworkers == 1 ? loop_fd(worker_loop(srv->workers[0].w)) : -1;
}

long tokend_server_timeout_ms(tokend_server *srv) {
    if (srv->nworkers != 1) return -1;
    server_worker *w = &srv->workers[0];
    long a = http_timeout_ms(worker_http(w->w)), b = loop_next_timeout_ms(worker_loop(w->w));
    if (a < 0) return b;
    return b < 0 || a < b ? a : b;
}

int tokend_server_step(tokend_server *srv, long timeout_ms, char *err, size_t errlen) {
    if (srv->nworkers != 1) {
        snprintf(err, errlen, "stepping needs a server with exactly one worker");
        return TOKEND_ERR;
    }
    if (server_worker_turn(&srv->workers[0], timeout_ms < 0 ? 0 : timeout_ms) < 0) {
        snprintf(err, errlen, "event loop failed: %s", strerror(errno));
        return TOKEND_ERR;
    }
    return TOKEND_OK;
}

/* Waits for worker w's thread to return. Once the server is stopping, gives up when the
 * drain time and a margin have passed since the first look (*give_up_ms, 0 until then): a
 * worker blocked where no budget reaches (a script in os.execute, say) does not hold the
 * exit. Returns 0 when it returned, -1 when given up. */
static int server_join(tokend_server *srv, server_worker *w, uint64_t *give_up_ms) {
    for (;;) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += SERVER_JOIN_POLL_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        if (pthread_timedjoin_np(w->thread, NULL, &until) != ETIMEDOUT) return 0;
        if (!atomic_load(&srv->stopping)) continue;
        uint64_t now = loop_now_ms();
        if (!*give_up_ms) *give_up_ms = now + ((uint64_t)srv->cfg->drain_timeout_s + SERVER_STOP_MARGIN_S) * 1000u;
        else if (now >= *give_up_ms) return -1;
    }
}

int tokend_server_run(tokend_server *srv, char *err, size_t errlen) {
    sigset_t all, old;
    int rc = TOKEND_OK;
    /* Workers block the asynchronous signals: the host's thread handles them, SIGPIPE stays
     * pending. Faults (SIGSEGV, SIGFPE, SIGBUS, SIGILL, SIGABRT) stay deliverable so that
     * crash handlers and debuggers see them where they happen. */
    sigfillset(&all);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGILL);
    sigdelset(&all, SIGABRT);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (int i = 0; i < srv->nworkers; i++) {
        server_worker *w = &srv->workers[i];
        int e = pthread_create(&w->thread, NULL, server_worker_main, w);
        if (e != 0) {
            snprintf(err, errlen, "cannot start worker %d: %s", i + 1, strerror(e));
            tokend_server_stop(srv);
            rc = TOKEND_ERR;
            break;
        }
        w->started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    uint64_t give_up_ms = 0;
    for (int i = 0; i < srv->nworkers; i++) {
        server_worker *w = &srv->workers[i];
        if (!w->started) continue;
        if (server_join(srv, w, &give_up_ms) < 0) {
            srv->stuck = 1;
            snprintf(err, errlen,
                     "worker %d did not stop within the drain time (%u s) and %d s more: stopping "
                     "without it (a script blocked where no budget reaches, such as os.execute?)",
                     i + 1, srv->cfg->drain_timeout_s, SERVER_STOP_MARGIN_S);
            rc = TOKEND_ERR;
            continue;
        }
        w->started = 0;
    }
    return rc;
}

void tokend_server_reload(tokend_server *srv) {
    atomic_fetch_add(&srv->reload_gen, 1);
    for (int i = 0; i < srv->nworkers; i++)
        if (srv->workers[i].w) loop_wake(worker_loop(srv->workers[i].w));
}

void tokend_server_stop(tokend_server *srv) {
    atomic_store(&srv->stopping, 1);
    for (int i = 0; i < srv->nworkers; i++)
        if (srv->workers[i].w) loop_wake(worker_loop(srv->workers[i].w));
}

int tokend_server_port(const tokend_server *srv) {
    return srv->port;
}

int tokend_server_tls_port(const tokend_server *srv) {
    return srv->tls_port > 0 ? srv->tls_port : 0;
}

void tokend_server_free(tokend_server *srv) {
    if (!srv || srv->stuck) return; /* a worker still runs on all of it: the process is exiting */
    fswatch_free(srv->watch);       /* on worker 1's loop */
    for (int i = 0; srv->workers && i < srv->nworkers; i++) server_worker_free(&srv->workers[i]);
    free(srv->workers);
    for (size_t i = 0; i < srv->n_c_routes; i++) {
        free(srv->c_routes[i]->path);
        free(srv->c_routes[i]);
    }
    free(srv->c_routes);
    worker_group_close(srv->group);
    free(srv);
}

/* tokend_mint's outcome, copied out of the callback. */
typedef struct server_minted {
    char *token;
    size_t token_cap;
    long *expires_out;
    int *upstream_status;
    char *err;
    size_t errlen;
    int ok;
    int finished;
} server_minted;

static void server_on_minted(void *ud, const upstream_result *r) {
    server_minted *m = ud;
    m->finished = 1;
    if (r->token && strlen(r->token) < m->token_cap) {
        memcpy(m->token, r->token, strlen(r->token) + 1);
        if (m->expires_out) *m->expires_out = r->expires_in_seconds;
        m->ok = 1;
        return;
    }
    snprintf(m->err, m->errlen, "%s", r->token ? "the token does not fit the buffer" : r->error);
    if (m->upstream_status) *m->upstream_status = r->http_status;
}

int tokend_mint(const tokend_config *cfg, long expires_in_s, long max_session_s, char *token, size_t token_cap,
                long *expires_out, int *upstream_status, char *err, size_t errlen) {
    server_minted m = { token, token_cap, expires_out, upstream_status, err, errlen, 0, 0 };
    worker_group *g = NULL;
    worker *w = NULL;
    if (upstream_status) *upstream_status = 0;
    if (upstream_check_token_args(expires_in_s, max_session_s, err, errlen) < 0) return TOKEND_ERR;
    if (!cfg->api_key || !*cfg->api_key) {
        snprintf(err, errlen, "no AssemblyAI API key is configured (ASSEMBLYAI_API_KEY)");
        return TOKEND_ERR;
    }
    worker_options wo = { .listen_fd = -1 };
    if (!(g = worker_group_open(cfg, WORKER_GROUP_MINT, err, errlen)) || !(w = worker_open(g, &wo, err, errlen)))
        goto out;
    if (!upstream_mint(worker_world(w)->up, expires_in_s, max_session_s, server_on_minted, &m)) {
        snprintf(err, errlen, "out of memory starting the token request");
        goto out;
    }
    if (loop_run_until(worker_loop(w), &m.finished) < 0)
        snprintf(err, errlen, "the event loop failed while waiting for the upstream");
out:
    worker_close(w);
    worker_group_close(g);
    return m.ok ? TOKEND_OK : TOKEND_ERR;
}

int tokend_script_check(const tokend_config *cfg, char *err, size_t errlen) {
    worker_group *g = NULL;
    worker *w = NULL;
    lhost *h = NULL;
    lhost_options ho;
    int rc = TOKEND_ERR;
    worker_options wo = { .workers = 1, .port = cfg->port, .listen_fd = -1 };
    if (!(g = worker_group_open(cfg, WORKER_GROUP_CHECK, err, errlen)) || !(w = worker_open(g, &wo, err, errlen)))
        goto out;
    worker_host_options(w, &ho);
    ho.open_module = linit_push_module;
    if (lhost_create(&ho, &h, err, errlen) == 0) rc = TOKEND_OK;
out:
    lhost_free(h);
    worker_close(w);
    worker_group_close(g);
    return rc;
}
