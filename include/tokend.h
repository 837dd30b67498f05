/* tokend.h: public API of libtokend, the core of the tokend token server.
 *
 * tokend mints short-lived AssemblyAI Universal-Streaming tokens for browsers and
 * serves a scripted HTTP front (routes, policies, static files) written in Lua 5.4.
 * Every function returns TOKEND_OK or TOKEND_ERR and writes a message into the
 * caller's error buffer; the library never prints to stdout or exits.
 */
#ifndef TOKEND_H
#define TOKEND_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TOKEND_VERSION "0.1.0"

#define TOKEND_OK 0
#define TOKEND_ERR (-1)

/* Log levels for tokend_config.log_level and the log sink. */
#define TOKEND_LOG_DEBUG 0
#define TOKEND_LOG_INFO 1
#define TOKEND_LOG_WARN 2
#define TOKEND_LOG_ERROR 3

/* Receives every log line (already redacted, without trailing newline). */
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
} tokend_config;

typedef struct tokend_server tokend_server;

/* Fills cfg with the defaults listed above. */
void tokend_config_init(tokend_config *cfg);

/* Creates a server: validates cfg, binds the listening socket and loads the script in
 * every worker. On failure returns TOKEND_ERR, *out is NULL and err holds a message
 * (for a script error, "file:line: message"). */
int tokend_server_create(const tokend_config *cfg, tokend_server **out, char *err, size_t errlen);

/* Runs the workers until tokend_server_stop(); blocks the calling thread.
 * Returns TOKEND_OK after a clean stop, TOKEND_ERR if a worker could not start. */
int tokend_server_run(tokend_server *srv, char *err, size_t errlen);

/* Asks a running server to stop. Safe from a signal handler or another thread. */
void tokend_server_stop(tokend_server *srv);

/* Asks a running server to reload its script: every worker loads it into a fresh Lua
 * state; requests in flight finish on the old one; if the script fails to load, the old
 * one keeps serving and the log says why. Safe from a signal handler or another thread. */
void tokend_server_reload(tokend_server *srv);

/* Returns the TCP port the server listens on (useful after port 0). */
int tokend_server_port(const tokend_server *srv);

/* Loads the script of cfg in a fresh Lua state without binding a port, to check it.
 * Returns TOKEND_OK, or TOKEND_ERR with "file:line: message" (and a traceback) in err. */
int tokend_script_check(const tokend_config *cfg, char *err, size_t errlen);

/* Releases a stopped (or never run) server. NULL is allowed. */
void tokend_server_free(tokend_server *srv);

/* Sends log lines to sink instead of stderr (NULL restores stderr). Process-wide. */
void tokend_set_log_sink(tokend_log_fn *sink, void *ud);

#ifdef __cplusplus
}
#endif
#endif
