/* tokend.h: public API of libtokend, the core of the tokend token server.
 *
 * tokend mints short-lived AssemblyAI Universal-Streaming tokens for browsers and
 * serves a scripted HTTP front (routes, policies, static files) written in Lua 5.4.
 * Functions that can fail return TOKEND_OK or TOKEND_ERR and write a message into the
 * caller's error buffer; the library never prints to stdout or exits (log lines go to
 * stderr, or to the sink set with tokend_set_log_sink()).
 *
 * Signals: the library changes no signal disposition. A program that embeds it must
 * ignore SIGPIPE (signal(SIGPIPE, SIG_IGN)) before running a server or minting: a client
 * or the upstream closing a connection mid-write would otherwise kill the process.
 */
#ifndef TOKEND_H
#define TOKEND_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TOKEND_VERSION "0.1.0"

/* Marks the functions libtokend exports; everything else in the library is hidden. */
#if defined(__GNUC__)
#define TOKEND_API __attribute__((visibility("default")))
#else
#define TOKEND_API
#endif

#define TOKEND_OK 0
#define TOKEND_ERR (-1)

/* Log levels for tokend_config.log_level and the log sink. */
#define TOKEND_LOG_DEBUG 0
#define TOKEND_LOG_INFO 1
#define TOKEND_LOG_WARN 2
#define TOKEND_LOG_ERROR 3

/* Receives every log line (already redacted, without trailing newline). It is called
 * from the server's worker threads, several at the same time: it must be thread-safe,
 * must not block for long (the worker waits), and must not call back into tokend. */
typedef void tokend_log_fn(void *ud, int level, const char *line);

/* Settings of a server. Fill with tokend_config_init() and override fields.
 * Strings are copied by tokend_server_create(); the caller keeps ownership. */
typedef struct tokend_config {
    const char *host;               /* address to listen on; default "127.0.0.1" */
    int port;                       /* TCP port; 0 picks a free one; default 8000 */
    const char *script;             /* routes script; default "scripts/routes.lua" */
    const char *public_dir;         /* folder the script may serve; default "public" */
    const char *api_key;            /* AssemblyAI API key; NULL or "" = none configured */
    const char *streaming_url;      /* default "https://streaming.assemblyai.com" */
    const char *ca_file;            /* CA bundle for upstream TLS; NULL = system default */
    int workers;                    /* event loops; 0 = one per core */
    long upstream_timeout_ms;       /* whole upstream call deadline; default 10000 */
    long connect_timeout_ms;        /* upstream connect deadline; default 5000 */
    unsigned int max_connections;   /* open client connections in total; default 10000 */
    unsigned int max_connections_per_ip; /* open connections from one address; 0 = no limit; default 64 */
    unsigned int idle_timeout_s;    /* idle client connection timeout; default 60 */
    unsigned int request_timeout_s; /* a request must arrive whole within this; default 30 */
    size_t max_header_bytes;        /* request line and headers; default 8192 (then 414/431) */
    size_t max_body_bytes;          /* request body limit; default 65536 */
    unsigned int max_query_args;    /* query arguments per request; default 64 */
    const char *trusted_proxies;    /* addresses/CIDRs whose X-Forwarded-For is believed; default none */
    size_t rate_limit_clients;      /* clients the rate limiters track at most; default 100000 */
    size_t lua_memory_bytes;        /* memory cap of each Lua state; default 64 MiB */
    long lua_instruction_limit;     /* VM instructions one request may run; default 10 million */
    int log_level;                  /* TOKEND_LOG_*; default TOKEND_LOG_INFO */
    int log_json;                   /* 1 = JSON lines; default 0 = text */
    unsigned int drain_timeout_s;   /* on stop, how long requests in flight may finish; default 10 */
    int watch_script;               /* 1 = reload when the script file changes; default 0 */
    const char *allowed_hosts;      /* Host names served besides localhost and addresses
                                       ("app.example.com, *.example.com", "*"); default none */
    const char *upstream_proxy;     /* proxy for the token calls (the environment's
                                       http_proxy is never used); default none */
    const char *env_file;           /* a .env file scripts read with tokend.env after the
                                       environment (the caller resolves settings from it);
                                       default none */
    const char *redis_url;          /* redis://[user:password@]host:port[/db] or unix:///path;
                                       NULL = no Redis; default none */
    long redis_timeout_ms;          /* deadline of one Redis command; default 50 */
    const char *region_urls;        /* AssemblyAI's data zones a script may mint in, "name=URL, ...";
                                       default "us=https://streaming.us.assemblyai.com,
                                       eu=https://streaming.eu.assemblyai.com"; "" for none */
    const char *agents_url;         /* AssemblyAI's Voice Agent API; default "https://agents.assemblyai.com" */
    const char *tls_cert;           /* HTTPS: the certificate (chain), a PEM file; default none */
    const char *tls_key;            /* its private key, a PEM file (not encrypted); default none */
    int tls_port;                   /* HTTPS on this port beside HTTP on port; 0: HTTPS alone on port
                                       (with tls_cert), or on port + 1 under dev; default 0 */
    int dev;                        /* 1 = a developer's machine: HTTPS beside HTTP (a development CA's
                                       certificate unless tls_cert is set), live reload, the machine's
                                       network names served; default 0 */
} tokend_config;

typedef struct tokend_server tokend_server;

/* Fills cfg with the defaults listed above. */
TOKEND_API void tokend_config_init(tokend_config *cfg);

/* Checks cfg without starting anything: ranges, and the lists and URLs parsed as they
 * will be used (the streaming URL, the Redis URL, trusted proxies, allowed hosts).
 * Returns TOKEND_OK, or TOKEND_ERR with err naming the setting. tokend_server_create
 * checks the same, and also what only a start can tell (files, addresses, Redis). */
TOKEND_API int tokend_config_check(const tokend_config *cfg, char *err, size_t errlen);

/* Creates a server: validates cfg, binds the listening socket and loads the script in
 * every worker. On failure returns TOKEND_ERR, *out is NULL and err holds a message
 * (for a script error, "file:line: message"). */
TOKEND_API int tokend_server_create(const tokend_config *cfg, tokend_server **out, char *err, size_t errlen);

/* Runs the workers until tokend_server_stop(); blocks the calling thread.
 * Returns TOKEND_OK after a clean stop, TOKEND_ERR if a worker could not start, or if a
 * worker had not returned cfg.drain_timeout_s + 3 s after the stop (a script blocked
 * where no budget reaches): the server is then left as it is (tokend_server_free does
 * nothing) and the process should exit. */
TOKEND_API int tokend_server_run(tokend_server *srv, char *err, size_t errlen);

/* Asks a running server to stop. Safe from a signal handler or another thread. */
TOKEND_API void tokend_server_stop(tokend_server *srv);

/* Asks a running server to reload its script: every worker loads it into a fresh Lua
 * state; requests in flight finish on the old one; if the script fails to load, the old
 * one keeps serving and the log says why. Safe from a signal handler or another thread. */
TOKEND_API void tokend_server_reload(tokend_server *srv);

/* ---- driving the server from the host's own event loop (cfg.workers must be 1) ----
 * Instead of tokend_server_run(): poll tokend_server_fd() for readability with a timeout
 * of at most tokend_server_timeout_ms(), then call tokend_server_step(srv, 0). */

/* A descriptor that becomes readable when the server has work; -1 unless workers == 1. */
TOKEND_API int tokend_server_fd(const tokend_server *srv);

/* Milliseconds until tokend_server_step() must run at the latest; -1 for no deadline. */
TOKEND_API long tokend_server_timeout_ms(tokend_server *srv);

/* Does the server's pending work, waiting up to timeout_ms for some (0: do not wait).
 * Returns TOKEND_OK, or TOKEND_ERR with err set when the loop failed or workers != 1. */
TOKEND_API int tokend_server_step(tokend_server *srv, long timeout_ms, char *err, size_t errlen);

/* ---- routes written in C ---- */

typedef struct tokend_request tokend_request;     /* valid during the handler call only */
typedef struct tokend_response tokend_response;

/* Answers req through resp. Called on the worker's thread; must not block. */
typedef void tokend_route_fn(void *ud, const tokend_request *req, tokend_response *resp);

/* Request fields; strings live until the handler returns; NULL when absent. */
TOKEND_API const char *tokend_request_method(const tokend_request *req);
TOKEND_API const char *tokend_request_path(const tokend_request *req);
TOKEND_API const char *tokend_request_client(const tokend_request *req);
TOKEND_API const char *tokend_request_header(const tokend_request *req, const char *lowercase_name);
TOKEND_API const char *tokend_request_query(const tokend_request *req, const char *name);
TOKEND_API const char *tokend_request_param(const tokend_request *req, const char *name);
TOKEND_API const char *tokend_request_body(const tokend_request *req, size_t *len);

/* Sets the answer: status 100..599, a Content-Type (NULL: text/plain) and a body that is
 * copied. Returns TOKEND_OK, or TOKEND_ERR for a bad status or no memory. A handler that
 * sets nothing answers 500. */
TOKEND_API int tokend_response_set(tokend_response *resp, int status, const char *content_type,
                        const char *body, size_t len);

/* Headers one response of a C route may carry, at most. */
#define TOKEND_MAX_RESPONSE_HEADERS 16

/* Adds a response header (copied). Returns TOKEND_ERR for a name or value with a line
 * break (or a colon in the name), past TOKEND_MAX_RESPONSE_HEADERS, or without memory. */
TOKEND_API int tokend_response_header(tokend_response *resp, const char *name, const char *value);

/* Adds a route answered by fn(ud, ...) in every worker, next to the script's routes (and
 * kept across reloads). Call after tokend_server_create() and before running. Returns
 * TOKEND_OK, or TOKEND_ERR with err set (bad method or path, route already defined). */
TOKEND_API int tokend_server_route(tokend_server *srv, const char *method, const char *path,
                        tokend_route_fn *fn, void *ud, char *err, size_t errlen);

/* ---- minting without a server ---- */

/* Asks AssemblyAI for a temporary token with cfg's key, streaming URL, CA file and
 * deadlines, blocking the caller. expires_in_s 1..600; max_session_s 60..10800 or 0 for
 * the default. On success writes the token (NUL-terminated) and *expires_out and returns
 * TOKEND_OK; otherwise TOKEND_ERR, err holds a message without the key and
 * *upstream_status the upstream's HTTP status (0 when none). */
TOKEND_API int tokend_mint(const tokend_config *cfg, long expires_in_s, long max_session_s, char *token,
                size_t token_cap, long *expires_out, int *upstream_status, char *err, size_t errlen);

/* Returns the TCP port the server listens on (useful after port 0). */
TOKEND_API int tokend_server_port(const tokend_server *srv);

/* Returns the TCP port that speaks HTTPS: the same as tokend_server_port() when HTTPS is
 * served alone, another beside HTTP, 0 when there is none. */
TOKEND_API int tokend_server_tls_port(const tokend_server *srv);

/* Loads the script of cfg in a fresh Lua state without binding a port, to check it.
 * Returns TOKEND_OK, or TOKEND_ERR with "file:line: message" (and a traceback) in err. */
TOKEND_API int tokend_script_check(const tokend_config *cfg, char *err, size_t errlen);

/* Releases a stopped (or never run) server. NULL is allowed. Does nothing for a server
 * whose run gave up on a worker that did not stop. */
TOKEND_API void tokend_server_free(tokend_server *srv);

/* Sends log lines to sink instead of stderr (NULL restores stderr). Process-wide: set it
 * before creating a server, not while one runs. */
TOKEND_API void tokend_set_log_sink(tokend_log_fn *sink, void *ud);

#ifdef __cplusplus
}
#endif
#endif
