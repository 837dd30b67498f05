/* worker.c: a worker's world (its event loop, HTTP front and clients) and what the workers of a server share. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <curl/curl.h>

#include "config.h"
#include "devca.h"
#include "devserver.h"
#include "envfile.h"
#include "fetch.h"
#include "log.h"
#include "mime.h"
#include "netaddr.h"
#include "policy.h"
#include "pool.h"
#include "redis.h"
#include "relay.h"
#include "secret.h"
#include "shdict.h"
#include "upstream.h"
#include "url.h"
#include "worker.h"

#define WORKER_REDIS_CHECK_MS 2000 /* how long the start-up check waits for Redis */

struct worker_group {
    tokend_config cfg; /* strings owned */
    int how;           /* WORKER_GROUP_* */
    url_endpoints endpoints;
    url_region regions[URL_REGION_MAX]; /* AssemblyAI's data zones by name */
    size_t nregions;
    url_endpoints agents;    /* the Voice Agent API */
    envfile *env;            /* the .env file tokend.env reads, or NULL */
    policy_buckets *buckets; /* the rate limiters' buckets */
    shdict_registry *shared; /* tokend.shared's dictionaries */
    pool_registry *pools;    /* tokend.pool's pools */
    policy_conns *conns;     /* open connections per client address */
    netaddr_nets *proxies;
    policy_hosts *hosts;
    redis_target redis;    /* where Redis is, when cfg.redis_url is set */
    int redis_answered;    /* to the check at start */
    devca_tls tls;         /* HTTPS: the certificate and key (PEM), the dev CA's certificate */
    devserver_hub *devhub; /* under dev: the workers' live-reload stations */
};

struct worker {
    worker_group *group;
    loop *lp;
    fetch *client; /* outgoing HTTP: token calls, tokend.http */
    upstream *up;
    redis_client *redis;        /* NULL without TOKEND_REDIS_URL */
    http_front *http;           /* NULL when it serves no HTTP */
    devserver *dev;             /* under dev: /__tokend/, before the dispatcher */
    http_dispatch_fn *dispatch; /* what answers the other requests */
    void *dispatch_ud;
    relay_hub *relay; /* its relayed sessions; NULL when it serves no HTTP */
    lhost_info info;
    lhost_world world;
};

static pthread_once_t worker_curl_once = PTHREAD_ONCE_INIT;
static CURLcode worker_curl_status = CURLE_OK;

static void worker_curl_init(void) {
    worker_curl_status = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* Checks cfg before anything is built: its values (tokend_config_check), then the CA
 * file it names. Returns 0, or -1 with err. */
static int worker_check_config(const tokend_config *c, char *err, size_t errlen) {
    if (tokend_config_check(c, err, errlen) != TOKEND_OK) return -1;
    if (c->ca_file && *c->ca_file && access(c->ca_file, R_OK) != 0) {
        snprintf(err, errlen, "CA bundle \"%s\": %s", c->ca_file, strerror(errno));
        return -1;
    }
    return 0;
}

/* The Host names served: the settings', and under dev the machine's network names
 * (<hostname>.local; its addresses are served as every address is). Returns 0 or -1. */
static int worker_group_hosts(worker_group *g, char *err, size_t errlen) {
    const tokend_config *c = &g->cfg;
    if (!c->dev) return policy_hosts_parse(c->allowed_hosts, c->host, &g->hosts, err, errlen);
    cert_names *names = calloc(1, sizeof *names);
    size_t cap = (c->allowed_hosts ? strlen(c->allowed_hosts) : 0) + CERT_MAX_NAMES * (CERT_NAME_LEN + 2) + 1, o = 0;
    char *spec = names ? malloc(cap) : NULL;
    int rc = -1;
    if (!spec) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    o = (size_t)snprintf(spec, cap, "%s", c->allowed_hosts ? c->allowed_hosts : "");
    devca_network_names(names);
    for (size_t i = 0; i < names->n; i++)
        if (!strchr(names->v[i], ':') && !isdigit((unsigned char)names->v[i][0])) /* addresses pass anyway */
            o += (size_t)snprintf(spec + o, cap - o, "%s%s", o ? ", " : "", names->v[i]);
    rc = policy_hosts_parse(spec, c->host, &g->hosts, err, errlen);
out:
    free(spec);
    free(names);
    return rc;
}

/* Opens the state the workers share. Returns 0 or -1 with err set. */
static int worker_group_share(worker_group *g, char *err, size_t errlen) {
    const tokend_config *c = &g->cfg;
    if (c->env_file) {
        if (envfile_load(c->env_file, &g->env, err, errlen) < 0) return -1;
        envfile_wipe(g->env, "ASSEMBLYAI_API_KEY"); /* the group holds its own copy */
        secret_wipe_env(g->env);                    /* and the secrets are the process's */
    }
    mime_load(NULL); /* /etc/mime.types, read once */
    if (netaddr_nets_parse(c->trusted_proxies, &g->proxies, err, errlen) < 0) return -1;
    if (worker_group_hosts(g, err, errlen) < 0) return -1;
    g->buckets = policy_buckets_create(c->rate_limit_clients);
    g->conns = policy_conns_create(c->max_connections_per_ip);
    g->shared = shdict_registry_create();
    g->pools = pool_registry_create();
    if (!g->buckets || !g->conns || !g->shared || !g->pools) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (c->redis_url) {
        /* A wrong address or password fails the start; a Redis that does not answer in
         * time is warned of: it may later, and the scripts' on-error policies apply. */
        long check_ms = g->how == WORKER_GROUP_SERVE ? WORKER_REDIS_CHECK_MS : 0;
        int rc = redis_open(c->redis_url, check_ms, &g->redis, err, errlen);
        if (rc < 0) return -1;
        if (rc > 0)
            log_msg(LOG_WARN, "%s; serving without Redis until it answers (each limiter's on_store_error applies)",
                    err);
        g->redis_answered = rc == 0;
    }
    return 0;
}

worker_group *worker_group_open(const tokend_config *cfg, int how, char *err, size_t errlen) {
    worker_group *g = NULL;
    pthread_once(&worker_curl_once, worker_curl_init);
    if (worker_curl_status != CURLE_OK) {
        snprintf(err, errlen, "libcurl failed to initialise: %s", curl_easy_strerror(worker_curl_status));
        return NULL;
    }
    if (worker_check_config(cfg, err, errlen) < 0) return NULL;
    if (!(g = calloc(1, sizeof *g)) || config_copy(&g->cfg, cfg) < 0) {
        free(g);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    g->how = how;
    /* The key is a secret like the script's (tokend.secret("ASSEMBLYAI_API_KEY")). */
    if (secret_adopt("ASSEMBLYAI_API_KEY", g->cfg.api_key) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (url_streaming_endpoints(g->cfg.streaming_url, &g->endpoints, err, errlen) != URL_OK ||
        url_regions(g->cfg.region_urls, g->regions, &g->nregions, err, errlen) != URL_OK ||
        url_agent_endpoints(g->cfg.agents_url ? g->cfg.agents_url : "https://agents.assemblyai.com", &g->agents, err,
                            errlen) != URL_OK)
        goto fail;
    if (how != WORKER_GROUP_MINT && worker_group_share(g, err, errlen) < 0) goto fail;
    if (how == WORKER_GROUP_SERVE && devca_tls_for(&g->cfg, &g->tls, err, errlen) < 0) goto fail;
    if (g->tls.expired)
        log_msg(LOG_WARN, "the certificate %s is not valid now (expired, or not yet valid): browsers will refuse it",
                g->cfg.tls_cert);
    if (how == WORKER_GROUP_SERVE && g->cfg.dev && !(g->devhub = devserver_hub_create(g->tls.ca_pem))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    return g;
fail:
    worker_group_close(g);
    return NULL;
}

void worker_group_close(worker_group *g) {
    if (!g) return;
    policy_buckets_free(g->buckets);
    policy_conns_free(g->conns);
    shdict_registry_free(g->shared);
    pool_registry_free(g->pools);
    envfile_free(g->env);
    netaddr_nets_free(g->proxies);
    policy_hosts_free(g->hosts);
    explicit_bzero(&g->redis, sizeof g->redis);
    devserver_hub_free(g->devhub);
    devca_tls_free(&g->tls);
    config_free(&g->cfg);
    free(g);
}

const tokend_config *worker_group_config(const worker_group *g) {
    return &g->cfg;
}

struct envfile *worker_group_env(const worker_group *g) {
    return g->env;
}

int worker_group_tls(const worker_group *g) {
    return g->tls.cert_pem != NULL;
}

devserver_hub *worker_group_devserver(const worker_group *g) {
    return g->devhub;
}

/* The HTTP front's dispatcher: the development server's paths, then the worker's own. */
static void worker_dispatch(void *ud, http_request *req) {
    worker *w = ud;
    if (w->dev && devserver_serve(w->dev, req)) return;
    w->dispatch(w->dispatch_ud, req);
}

/* Opens the worker's HTTP front on its listening socket. Returns 0 or -1 with err. */
static int worker_serve_http(worker *w, const worker_options *o, char *err, size_t errlen) {
    const worker_group *g = w->group;
    unsigned int nworkers = o->workers > 0 ? (unsigned int)o->workers : 1u;
    unsigned int share = g->cfg.max_connections / nworkers;
    http_options ho = {
        .listen_fd = o->listen_fd,
        .max_connections = share ? share : 1,
        .idle_timeout_s = g->cfg.idle_timeout_s,
        .request_timeout_s = g->cfg.request_timeout_s,
        .max_header_bytes = g->cfg.max_header_bytes,
        .max_body_bytes = g->cfg.max_body_bytes,
        .max_query_args = g->cfg.max_query_args,
        .proxies = g->proxies,
        .conns = g->conns,
        .hosts = g->hosts,
        .listen_tls = o->listen_tls,
        .tls_listen_fd = o->tls_listen_fd > 0 ? o->tls_listen_fd : -1,
        .tls_cert_pem = g->tls.cert_pem,
        .tls_key_pem = g->tls.key_pem,
    };
    if ((o->listen_tls || o->tls_listen_fd > 0) && !g->tls.cert_pem) {
        snprintf(err, errlen, "HTTPS asked for without a certificate");
        close(o->listen_fd);
        if (o->tls_listen_fd > 0) close(o->tls_listen_fd);
        return -1;
    }
    /* http_create takes both sockets, also when it fails. */
    w->dispatch = o->dispatch;
    w->dispatch_ud = o->dispatch_ud;
    if (g->devhub && !(w->dev = devserver_open(g->devhub, w->lp, err, errlen))) {
        close(o->listen_fd);
        if (o->tls_listen_fd > 0) close(o->tls_listen_fd);
        return -1;
    }
    return (w->http = http_create(w->lp, &ho, worker_dispatch, w, err, errlen)) ? 0 : -1;
}

/* Fills what scripts see of the worker (tokend.config) and what their calls reach. */
static void worker_describe(worker *w, const worker_options *o) {
    const worker_group *g = w->group;
    const tokend_config *c = &g->cfg;
    w->info = (lhost_info){
        .host = o->listen_fd >= 0 && c->host ? c->host : "",
        .port = o->port,
        .script = c->script ? c->script : "",
        .public_dir = c->public_dir ? c->public_dir : "",
        .streaming_url = g->endpoints.base,
        .token_url = g->endpoints.token_url,
        .websocket_url = g->endpoints.websocket_url,
        .workers = o->workers > 0 ? o->workers : 1,
        .worker = o->id + 1,
        .api_key_configured = c->api_key && *c->api_key,
        .redis_configured = c->redis_url != NULL,
        .regions = g->regions,
        .nregions = g->nregions,
        .agents = &g->agents,
        .tls_port = o->tls_port,
        .dev = c->dev,
    };
    /* A script being checked loads as a server's would (its timers and pools are made). */
    int serves = o->listen_fd >= 0 || g->how == WORKER_GROUP_CHECK;
    w->world = (lhost_world){ .serves = serves,
                              .lp = w->lp,
                              .client = w->client,
                              .up = w->up,
                              .buckets = g->buckets,
                              .shared = g->shared,
                              .pools = g->pools,
                              .env = g->env,
                              .redis = w->redis,
                              .info = &w->info,
                              .relay = w->relay };
}

worker *worker_open(worker_group *g, const worker_options *o, char *err, size_t errlen) {
    const tokend_config *c = &g->cfg;
    worker *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    w->group = g;
    if (!(w->lp = loop_create())) {
        snprintf(err, errlen, "cannot create an event loop: %s", strerror(errno));
        goto fail;
    }
    fetch_options fo = { .ca_file = c->ca_file, .connect_timeout_ms = c->connect_timeout_ms };
    upstream_options uo = {
        .token_url = g->endpoints.token_url,
        .api_key = c->api_key,
        .proxy = c->upstream_proxy,
        .timeout_ms = c->upstream_timeout_ms,
    };
    if (!(w->client = fetch_create(w->lp, &fo, err, errlen))) goto fail;
    if (!(w->up = upstream_create(w->client, &uo, err, errlen))) goto fail;
    if (c->redis_url && g->how == WORKER_GROUP_SERVE) {
        if (!(w->redis = redis_create(w->lp, &g->redis, c->redis_timeout_ms))) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        if (g->redis_answered) redis_wait_ready(w->redis, WORKER_REDIS_CHECK_MS / 2); /* serve with it at once */
    }
    if (o->listen_fd >= 0) {
        relay_settings rs = { .url = g->endpoints.base,
                              .api_key = c->api_key,
                              .proxy = c->upstream_proxy,
                              .handshake_timeout_ms = c->upstream_timeout_ms };
        if (!(w->relay = relay_hub_create(w->lp, w->client, &rs))) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    worker_describe(w, o);
    if (o->listen_fd >= 0 && worker_serve_http(w, o, err, errlen) < 0) {
        worker_close(w);
        return NULL;
    }
    return w;
fail:
    if (o->listen_fd >= 0) close(o->listen_fd);
    if (o->tls_listen_fd > 0) close(o->tls_listen_fd);
    worker_close(w);
    return NULL;
}

void worker_close(worker *w) {
    if (!w) return;
    relay_hub_free(w->relay); /* its sessions use the HTTP front and client */
    redis_free(w->redis);
    upstream_free(w->up);
    fetch_free(w->client);
    http_free(w->http);      /* answers what is left 503 */
    devserver_close(w->dev); /* its pages' streams ended with the front */
    loop_free(w->lp);
    free(w);
}

size_t worker_sessions(const worker *w) {
    return relay_hub_count(w->relay);
}

void worker_end_sessions(worker *w) {
    if (w->relay) relay_hub_close_all(w->relay);
}

loop *worker_loop(const worker *w) {
    return w->lp;
}

http_front *worker_http(const worker *w) {
    return w->http;
}

const lhost_world *worker_world(const worker *w) {
    return &w->world;
}

void worker_host_options(const worker *w, lhost_options *o) {
    const tokend_config *c = &w->group->cfg;
    *o = (lhost_options){
        .script = c->script,
        .memory_limit = c->lua_memory_bytes,
        .instruction_limit = c->lua_instruction_limit,
        .max_query_args = c->max_query_args,
        .world = &w->world,
    };
}
