/* server.c: the server's lifecycle: listening sockets, worker threads, start and stop. */
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
#include <curl/curl.h>

#include "config.h"
#include "envfile.h"
#include "fetch.h"
#include "http.h"
#include "lcroutelib.h"
#include "lhost.h"
#include "linit.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "mime.h"
#include "netaddr.h"
#include "policy.h"
#include "pool.h"
#include "redis.h"
#include "server.h"
#include "shdict.h"
#include "tokend.h"
#include "upstream.h"
#include "url.h"

#define SERVER_MAX_WORKERS 256
#define SERVER_WATCH_MS 500         /* how often --watch looks at the script */
#define SERVER_REDIS_CHECK_MS 2000  /* how long the start-up check waits for Redis */
#define SERVER_EXTRA_TURNS 4        /* libmicrohttpd turns per loop wake-up, at most */

/* A Lua host replaced by a reload, kept until its last request is answered. */
typedef struct server_retired {
    struct server_retired *next;
    lhost *lua;
} server_retired;

typedef struct server_worker {
    tokend_server *srv;
    int id;
    loop *lp;
    fetch *client;              /* outgoing HTTP: token calls */
    upstream *up;
    redis_client *redis;        /* NULL without TOKEND_REDIS_URL */
    lhost *lua;
    http_front *http;
    lhost_info info;
    lhost_world world;
    pthread_t thread;
    int started;
    int reload_seen;            /* the reload generation this worker has loaded */
    server_retired *retired;
    loop_timer watch_timer;     /* worker 1 under --watch */
    struct timespec script_mtime;
    off_t script_size;
} server_worker;

struct tokend_server {
    tokend_config cfg;          /* strings below are owned copies */
    url_endpoints endpoints;
    int port;
    int nworkers;
    server_worker *workers;
    atomic_int stopping;
    atomic_int reload_gen;
    lcroute **c_routes;             /* routes in C, re-added on every reload */
    size_t n_c_routes;
    lhost *attached;                /* the Lua module's host, or NULL */
    policy_buckets *buckets;        /* shared by every worker's scripts */
    shdict_registry *shared;        /* tokend.shared's dictionaries, idem */
    pool_registry *pools;           /* tokend.pool's pools, idem */
    envfile *env;                   /* the .env file tokend.env reads, or NULL */
    policy_conns *conns;            /* open connections per client address, all workers */
    netaddr_nets *proxies;
    policy_hosts *hosts;
    redis_target redis;             /* where Redis is, when cfg.redis_url is set */
    int checking;                   /* tokend_script_check: no connections */
    int redis_answered;             /* to the check at start */
};

static pthread_once_t server_curl_once = PTHREAD_ONCE_INIT;
static CURLcode server_curl_status = CURLE_OK;

static void server_curl_init(void) {
    server_curl_status = curl_global_init(CURL_GLOBAL_DEFAULT);
}

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

static int server_check_config(const tokend_config *c, char *err, size_t errlen) {
    if (c->port < 0 || c->port > 65535) {
        snprintf(err, errlen, "port %d is out of range 0..65535", c->port);
        return -1;
    }
    if (c->workers < 0 || c->workers > SERVER_MAX_WORKERS) {
        snprintf(err, errlen, "workers %d is out of range 0..%d", c->workers, SERVER_MAX_WORKERS);
        return -1;
    }
    if (!c->host || !*c->host || !c->script || !*c->script || !c->public_dir || !c->streaming_url) {
        snprintf(err, errlen, "host, script, public folder and streaming URL must be set (tokend_config_init "
                              "fills the defaults)");
        return -1;
    }
    if (c->ca_file && *c->ca_file && access(c->ca_file, R_OK) != 0) {
        snprintf(err, errlen, "CA bundle \"%s\": %s", c->ca_file, strerror(errno));
        return -1;
    }
    return 0;
}

/* Creates the abuse-control state the workers share. Returns 0 or -1 with err set. */
static int server_policy_init(tokend_server *srv, char *err, size_t errlen) {
    if (srv->cfg.env_file) {
        if (envfile_load(srv->cfg.env_file, &srv->env, err, errlen) < 0) return -1;
        envfile_wipe(srv->env, "ASSEMBLYAI_API_KEY");   /* the server holds its own copy */
    }
    mime_load(NULL);        /* /etc/mime.types, read once at start */
    if (netaddr_nets_parse(srv->cfg.trusted_proxies, &srv->proxies, err, errlen) < 0) return -1;
    if (policy_hosts_parse(srv->cfg.allowed_hosts, srv->cfg.host, &srv->hosts, err, errlen) < 0) return -1;
    srv->buckets = policy_buckets_create(srv->cfg.rate_limit_clients);
    srv->conns = policy_conns_create(srv->cfg.max_connections_per_ip);
    srv->shared = shdict_registry_create();
    srv->pools = pool_registry_create();
    if (!srv->buckets || !srv->conns || !srv->shared || !srv->pools) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (srv->cfg.redis_url) {
        /* A wrong address or password fails the start; a Redis that does not answer in
         * time is warned of: it may later, and the scripts' on-error policies apply. */
        int rc = redis_open(srv->cfg.redis_url, srv->checking ? 0 : SERVER_REDIS_CHECK_MS, &srv->redis, err, errlen);
        if (rc < 0) return -1;
        if (rc > 0) log_msg(LOG_WARN, "%s; serving without Redis until it answers", err);
        srv->redis_answered = rc == 0;
    }
    return 0;
}

static void server_policy_free(tokend_server *srv) {
    policy_buckets_free(srv->buckets);
    policy_conns_free(srv->conns);
    shdict_registry_free(srv->shared);
    pool_registry_free(srv->pools);
    envfile_free(srv->env);
    netaddr_nets_free(srv->proxies);
    policy_hosts_free(srv->hosts);
}

/* Loads the script into a new Lua host for worker w, with the routes written in C.
 * Returns 0 or -1 with err set. */
static int server_worker_load(server_worker *w, lhost **out, char *err, size_t errlen) {
    tokend_server *srv = w->srv;
    lhost_options ho = {
        .script = srv->cfg.script, .memory_limit = srv->cfg.lua_memory_bytes,
        .instruction_limit = srv->cfg.lua_instruction_limit, .max_query_args = srv->cfg.max_query_args,
        .world = &w->world, .open_module = linit_push_module,
    };
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

/* The HTTP front's dispatcher: the worker's current Lua host answers. */
static void server_worker_dispatch(void *ud, http_request *req) {
    server_worker *w = ud;
    lhost_dispatch(w->lua, req);
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
    lhost_retire(w->lua);      /* its timers stop; its requests in flight finish */
    r->lua = w->lua;
    r->next = w->retired;
    w->retired = r;
    w->lua = fresh;
    metrics_reload(1);
    if (w->id == 0) log_msg(LOG_INFO, "reloaded %s", w->srv->cfg.script);
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

/* --watch: reloads every worker when the script's modification time or size changes. */
static void server_on_watch(void *ud) {
    server_worker *w = ud;
    struct stat st;
    if (stat(w->srv->cfg.script, &st) == 0 &&
        (st.st_mtim.tv_sec != w->script_mtime.tv_sec || st.st_mtim.tv_nsec != w->script_mtime.tv_nsec ||
         st.st_size != w->script_size)) {
        w->script_mtime = st.st_mtim;
        w->script_size = st.st_size;
        log_msg(LOG_INFO, "%s changed", w->srv->cfg.script);
        tokend_server_reload(w->srv);
    }
    loop_timer_start(w->lp, &w->watch_timer, SERVER_WATCH_MS, server_on_watch, w);
}

/* Creates a worker's loop, clients and Lua host (not its HTTP front). */
static int server_worker_init(tokend_server *srv, server_worker *w, int id, char *err, size_t errlen) {
    w->srv = srv;
    w->id = id;
    w->lp = loop_create();
    if (!w->lp) {
        snprintf(err, errlen, "cannot create an event loop: %s", strerror(errno));
        return -1;
    }
    fetch_options fo = { .ca_file = srv->cfg.ca_file, .connect_timeout_ms = srv->cfg.connect_timeout_ms };
    upstream_options uo = {
        .token_url = srv->endpoints.token_url, .api_key = srv->cfg.api_key, .proxy = srv->cfg.upstream_proxy,
        .timeout_ms = srv->cfg.upstream_timeout_ms,
    };
    if (!(w->client = fetch_create(w->lp, &fo, err, errlen))) return -1;
    if (!(w->up = upstream_create(w->client, &uo, err, errlen))) return -1;
    if (srv->cfg.redis_url && !srv->checking) {
        if (!(w->redis = redis_create(w->lp, &srv->redis, srv->cfg.redis_timeout_ms))) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        if (srv->redis_answered) redis_wait_ready(w->redis, SERVER_REDIS_CHECK_MS / 2);    /* serve with it at once */
    }
    w->info = (lhost_info){
        .host = srv->cfg.host, .port = srv->port, .script = srv->cfg.script, .public_dir = srv->cfg.public_dir,
        .streaming_url = srv->endpoints.base, .token_url = srv->endpoints.token_url,
        .websocket_url = srv->endpoints.websocket_url, .workers = srv->nworkers, .worker = id + 1,
        .api_key_configured = srv->cfg.api_key && *srv->cfg.api_key, .redis_configured = srv->cfg.redis_url != NULL,
    };
    w->world = (lhost_world){ .serves = 1, .lp = w->lp, .client = w->client, .up = w->up, .buckets = srv->buckets,
                              .shared = srv->shared, .pools = srv->pools, .env = srv->env, .redis = w->redis,
                              .info = &w->info };
    if (srv->attached) {
        w->lua = srv->attached;
        lhost_serve(w->lua, &w->world);
        return 0;
    }
    return server_worker_load(w, &w->lua, err, errlen);
}

static void server_worker_free(server_worker *w) {
    if (w->lp) loop_timer_stop(w->lp, &w->watch_timer);
    server_worker_reap(w, 1);       /* cancels what the Lua hosts wait for */
    if (w->srv && w->srv->attached && w->lua == w->srv->attached) {
        lhost_serve(w->lua, NULL);  /* the module's: back to its own world */
        w->lua = NULL;
    }
    lhost_free(w->lua);
    redis_free(w->redis);
    upstream_free(w->up);
    fetch_free(w->client);
    http_free(w->http);         /* answers what is left 503 */
    loop_free(w->lp);
}

/* Notes the names of the .env file that are neither settings nor read by the script (a
 * typo would otherwise go unnoticed). */
static void server_report_unknown(tokend_server *srv) {
    for (size_t i = 0; i < envfile_count(srv->env); i++) {
        const char *name = envfile_name(srv->env, i);
        if (!config_by_env(name) && !envfile_was_read(srv->env, i))
            log_msg(LOG_INFO, "note: %s sets %s, which tokend does not use and the script does not read",
                    srv->cfg.env_file, name);
    }
}

int tokend_server_create(const tokend_config *cfg, tokend_server **out, char *err, size_t errlen) {
    return server_create_attached(cfg, NULL, out, err, errlen);
}

int server_stopping(const tokend_server *srv) {
    return atomic_load(&srv->stopping);
}

int server_create_attached(const tokend_config *cfg, lhost *attached, tokend_server **out, char *err, size_t errlen) {
    tokend_server *srv = NULL;
    *out = NULL;
    pthread_once(&server_curl_once, server_curl_init);
    if (server_curl_status != CURLE_OK) {
        snprintf(err, errlen, "libcurl failed to initialise: %s", curl_easy_strerror(server_curl_status));
        return TOKEND_ERR;
    }
    if (server_check_config(cfg, err, errlen) < 0) return TOKEND_ERR;
    srv = calloc(1, sizeof *srv);
    if (!srv || config_copy(&srv->cfg, cfg) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    srv->attached = attached;
    if (attached) srv->cfg.workers = 1;
    log_configure(srv->cfg.log_level, srv->cfg.log_json);
    log_set_secret(srv->cfg.api_key);
    if (url_streaming_endpoints(srv->cfg.streaming_url, &srv->endpoints, err, errlen) != URL_OK) goto fail;
    if (server_policy_init(srv, err, errlen) < 0) goto fail;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    srv->nworkers = srv->cfg.workers > 0 ? srv->cfg.workers : (int)(cores > 0 ? (cores < SERVER_MAX_WORKERS ? cores : SERVER_MAX_WORKERS) : 1);
    srv->workers = calloc((size_t)srv->nworkers, sizeof *srv->workers);
    if (!srv->workers) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    srv->port = cfg->port;
    if (srv->port != 0 && server_port_free(srv->cfg.host, srv->port, err, errlen) < 0) goto fail;
    for (int i = 0; i < srv->nworkers; i++) {
        server_worker *w = &srv->workers[i];
        int fd = server_listen(srv->cfg.host, &srv->port, 1, err, errlen);
        if (fd < 0) goto fail;
        if (server_worker_init(srv, w, i, err, errlen) < 0) {
            close(fd);
            goto fail;
        }
        unsigned int per_worker = cfg->max_connections / (unsigned int)srv->nworkers;
        http_options ho = {
            .listen_fd = fd, .max_connections = per_worker ? per_worker : 1,
            .idle_timeout_s = cfg->idle_timeout_s, .request_timeout_s = cfg->request_timeout_s,
            .max_header_bytes = cfg->max_header_bytes, .max_body_bytes = cfg->max_body_bytes,
            .max_query_args = cfg->max_query_args,
            .proxies = srv->proxies, .conns = srv->conns, .hosts = srv->hosts,
        };
        w->http = http_create(w->lp, &ho, server_worker_dispatch, w, err, errlen);
        if (!w->http) {
            close(fd);
            goto fail;
        }
    }
    server_report_unknown(srv);
    if (srv->cfg.watch_script) {
        struct stat st;
        server_worker *w = &srv->workers[0];
        if (stat(srv->cfg.script, &st) == 0) {
            w->script_mtime = st.st_mtim;
            w->script_size = st.st_size;
        }
        loop_timer_start(w->lp, &w->watch_timer, SERVER_WATCH_MS, server_on_watch, w);
    }
    *out = srv;
    return TOKEND_OK;
fail:
    tokend_server_free(srv);
    return TOKEND_ERR;
}

/* One turn of a worker's loop: wait up to max_wait_ms, do what is due, then reloads and
 * the reaping of retired hosts. Returns 0, or -1 when the loop failed. */
static int server_worker_turn(server_worker *w, long max_wait_ms) {
    tokend_server *srv = w->srv;
    long wait = http_timeout_ms(w->http);
    if (max_wait_ms >= 0 && (wait < 0 || wait > max_wait_ms)) wait = max_wait_ms;
    if (loop_run_once(w->lp, wait) < 0) return -1;
    /* libmicrohttpd's turn, then the timers its handlers armed for now (curl starting a
     * call); again while it has work at once (a connection that sent its answer reads the
     * next request), without a wait in epoll between. Bounded: the loop's descriptors
     * get their turn. */
    for (int i = 0; i < SERVER_EXTRA_TURNS; i++) {
        http_run(w->http);
        loop_run_due(w->lp);
        if (http_timeout_ms(w->http) != 0) break;
    }
    int gen = atomic_load(&srv->reload_gen);
    if (gen != w->reload_seen) {
        w->reload_seen = gen;
        server_worker_reload(w);
    }
    if (w->retired) server_worker_reap(w, 0);
    return 0;
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
    /* Drain: stop accepting, let requests in flight finish within the drain time. */
    http_quiesce(w->http);
    uint64_t deadline = loop_now_ms() + (uint64_t)srv->cfg.drain_timeout_s * 1000u;
    while (http_in_flight(w->http) > 0 && loop_now_ms() < deadline) server_worker_turn(w, 100);
    if (http_in_flight(w->http) > 0)
        log_msg(LOG_WARN, "worker %d: %zu requests still running after the drain time", w->id + 1,
                http_in_flight(w->http));
    return NULL;
}

int tokend_server_route(tokend_server *srv, const char *method, const char *path,
                        tokend_route_fn *fn, void *ud, char *err, size_t errlen) {
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
            if (i == 0) goto fail;      /* bad route: no worker has it */
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
    return srv->nworkers == 1 ? loop_fd(srv->workers[0].lp) : -1;
}

long tokend_server_timeout_ms(tokend_server *srv) {
    if (srv->nworkers != 1) return -1;
    server_worker *w = &srv->workers[0];
    long a = http_timeout_ms(w->http), b = loop_next_timeout_ms(w->lp);
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
    for (int i = 0; i < srv->nworkers; i++) {
        if (srv->workers[i].started) pthread_join(srv->workers[i].thread, NULL);
        srv->workers[i].started = 0;
    }
    return rc;
}

void tokend_server_reload(tokend_server *srv) {
    atomic_fetch_add(&srv->reload_gen, 1);
    for (int i = 0; i < srv->nworkers; i++)
        if (srv->workers[i].lp) loop_wake(srv->workers[i].lp);
}

void tokend_server_stop(tokend_server *srv) {
    atomic_store(&srv->stopping, 1);
    for (int i = 0; i < srv->nworkers; i++)
        if (srv->workers[i].lp) loop_wake(srv->workers[i].lp);
}

int tokend_server_port(const tokend_server *srv) {
    return srv->port;
}

void tokend_server_free(tokend_server *srv) {
    if (!srv) return;
    for (int i = 0; srv->workers && i < srv->nworkers; i++) server_worker_free(&srv->workers[i]);
    free(srv->workers);
    for (size_t i = 0; i < srv->n_c_routes; i++) {
        free(srv->c_routes[i]->path);
        free(srv->c_routes[i]);
    }
    free(srv->c_routes);
    server_policy_free(srv);
    config_free(&srv->cfg);
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
} server_minted;

static void server_on_minted(void *ud, const upstream_result *r) {
    server_minted *m = ud;
    if (r->token && strlen(r->token) < m->token_cap) {
        memcpy(m->token, r->token, strlen(r->token) + 1);
        if (m->expires_out) *m->expires_out = r->expires_in_seconds;
        m->ok = 1;
        return;
    }
    snprintf(m->err, m->errlen, "%s", r->token ? "the token does not fit the buffer" : r->error);
    if (m->upstream_status) *m->upstream_status = r->http_status;
}

int tokend_mint(const tokend_config *cfg, long expires_in_s, long max_session_s, char *token,
                size_t token_cap, long *expires_out, int *upstream_status, char *err, size_t errlen) {
    url_endpoints endpoints;
    server_minted m = { token, token_cap, expires_out, upstream_status, err, errlen, 0 };
    if (upstream_status) *upstream_status = 0;
    pthread_once(&server_curl_once, server_curl_init);
    if (expires_in_s < 1 || expires_in_s > 600 || (max_session_s && (max_session_s < 60 || max_session_s > 10800))) {
        snprintf(err, errlen, "expires_in_seconds must be 1..600 and max_session_duration_seconds 60..10800");
        return TOKEND_ERR;
    }
    if (!cfg->api_key || !*cfg->api_key) {
        snprintf(err, errlen, "no AssemblyAI API key is configured (ASSEMBLYAI_API_KEY)");
        return TOKEND_ERR;
    }
    if (url_streaming_endpoints(cfg->streaming_url, &endpoints, err, errlen) != URL_OK) return TOKEND_ERR;
    fetch_options fo = { .ca_file = cfg->ca_file, .connect_timeout_ms = cfg->connect_timeout_ms };
    upstream_options uo = {
        .token_url = endpoints.token_url, .api_key = cfg->api_key, .proxy = cfg->upstream_proxy,
        .timeout_ms = cfg->upstream_timeout_ms,
    };
    if (upstream_mint_blocking(&fo, &uo, expires_in_s, max_session_s, server_on_minted, &m, err, errlen) < 0)
        return TOKEND_ERR;
    return m.ok ? TOKEND_OK : TOKEND_ERR;
}

int tokend_script_check(const tokend_config *cfg, char *err, size_t errlen) {
    tokend_server srv;
    server_worker w;
    int rc = TOKEND_ERR;
    memset(&srv, 0, sizeof srv);
    memset(&w, 0, sizeof w);
    pthread_once(&server_curl_once, server_curl_init);
    if (server_check_config(cfg, err, errlen) < 0) return TOKEND_ERR;
    if (config_copy(&srv.cfg, cfg) < 0) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    if (url_streaming_endpoints(srv.cfg.streaming_url, &srv.endpoints, err, errlen) != URL_OK) goto out;
    srv.nworkers = 1;
    srv.port = cfg->port;
    srv.checking = 1;
    if (server_policy_init(&srv, err, errlen) < 0) goto out;
    if (server_worker_init(&srv, &w, 0, err, errlen) < 0) goto out;
    rc = TOKEND_OK;
out:
    server_worker_free(&w);
    server_policy_free(&srv);
    config_free(&srv.cfg);
    return rc;
}
