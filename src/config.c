/* config.c: tokend's settings: one table of names, flags, variables, defaults, ranges and help. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "netaddr.h"
#include "policy.h"
#include "redis.h"
#include "url.h"

#define CONFIG_FIELD(f) offsetof(tokend_config, f)
#define CONFIG_TEXT 1, 0 /* the range of a setting that is not an integer */

const config_setting config_settings[] = {
    { "api_key", NULL, "ASSEMBLYAI_API_KEY", CONFIG_SECRET, NULL, CONFIG_TEXT, CONFIG_FIELD(api_key),
      "your AssemblyAI key; without it /token answers 503" },
    { "streaming_url", NULL, "ASSEMBLYAI_STREAMING_URL", CONFIG_STRING, "https://streaming.assemblyai.com", CONFIG_TEXT,
      CONFIG_FIELD(streaming_url),
      "region or fake: tokens from <url>/v3/token, the browser streams to wss://<host>/v3/ws" },
    { "region_urls", NULL, "ASSEMBLYAI_REGION_URLS", CONFIG_STRING,
      "us=https://streaming.us.assemblyai.com, eu=https://streaming.eu.assemblyai.com", CONFIG_TEXT,
      CONFIG_FIELD(region_urls), "data zones scripts may mint in (name=URL, ...): generate_temp_token's region" },
    { "agents_url", NULL, "ASSEMBLYAI_AGENTS_URL", CONFIG_STRING, "https://agents.assemblyai.com", CONFIG_TEXT,
      CONFIG_FIELD(agents_url), "Voice Agent API: tokens from <url>/v1/token, sessions at wss://<host>/v1/ws" },
    { "port", "port", "PORT", CONFIG_INT, "8000", 0, 65535, CONFIG_FIELD(port),
      "TCP port; 0 picks a free one (printed at start)" },
    { "host", "host", "HOST", CONFIG_STRING, "127.0.0.1", CONFIG_TEXT, CONFIG_FIELD(host),
      "address to listen on (0.0.0.0 or :: for all)" },
    { "tls_cert", "tls-cert", "TOKEND_TLS_CERT", CONFIG_STRING, NULL, CONFIG_TEXT, CONFIG_FIELD(tls_cert),
      "serve HTTPS with this certificate (chain), a PEM file" },
    { "tls_key", "tls-key", "TOKEND_TLS_KEY", CONFIG_STRING, NULL, CONFIG_TEXT, CONFIG_FIELD(tls_key),
      "the certificate's private key, a PEM file" },
    { "tls_port", "tls-port", "TOKEND_TLS_PORT", CONFIG_INT, NULL, 1, 65535, CONFIG_FIELD(tls_port),
      "HTTPS on this port beside HTTP on --port (without it, HTTPS alone on --port)" },
    { "script", "script", "TOKEND_SCRIPT", CONFIG_STRING, "scripts/routes.lua", CONFIG_TEXT, CONFIG_FIELD(script),
      "the routes script" },
    { "public", "public", "TOKEND_PUBLIC", CONFIG_STRING, "public", CONFIG_TEXT, CONFIG_FIELD(public_dir),
      "static folder, given to the script as tokend.config.public" },
    { "workers", "workers", "TOKEND_WORKERS", CONFIG_INT, "0", 0, CONFIG_MAX_WORKERS, CONFIG_FIELD(workers),
      "event loops, each with its own Lua state; 0 = one per core" },
    { "upstream_timeout_ms", "upstream-timeout-ms", "TOKEND_UPSTREAM_TIMEOUT_MS", CONFIG_LONG, "10000", 100, 600000,
      CONFIG_FIELD(upstream_timeout_ms), "deadline of one token request (then 504)" },
    { "connect_timeout_ms", NULL, "TOKEND_CONNECT_TIMEOUT_MS", CONFIG_LONG, "5000", 100, 600000,
      CONFIG_FIELD(connect_timeout_ms), "deadline of opening a connection to the upstream" },
    { "log_level", "log-level", "TOKEND_LOG_LEVEL", CONFIG_LEVEL, "info", CONFIG_TEXT, CONFIG_FIELD(log_level),
      "debug, info, warn or error" },
    { "log_format", "log-format", "TOKEND_LOG_FORMAT", CONFIG_FORMAT, "text", CONFIG_TEXT, CONFIG_FIELD(log_json),
      "text, or json for one JSON object per line" },
    { "ca_bundle", NULL, "CURL_CA_BUNDLE", CONFIG_STRING, NULL, CONFIG_TEXT, CONFIG_FIELD(ca_file),
      "CA file that verifies the upstream (default: the system store)" },
    { "trusted_proxies", "trusted-proxies", "TOKEND_TRUSTED_PROXIES", CONFIG_STRING, NULL, CONFIG_TEXT,
      CONFIG_FIELD(trusted_proxies), "addresses or CIDR networks whose X-Forwarded-For is believed" },
    { "allowed_hosts", "allowed-hosts", "TOKEND_ALLOWED_HOSTS", CONFIG_STRING, NULL, CONFIG_TEXT,
      CONFIG_FIELD(allowed_hosts), "Host names served besides localhost and IP addresses (*.domain, or *)" },
    { "upstream_proxy", NULL, "TOKEND_UPSTREAM_PROXY", CONFIG_STRING, NULL, CONFIG_TEXT, CONFIG_FIELD(upstream_proxy),
      "proxy URL for the token calls (http_proxy and the like are ignored)" },
    { "redis_url", NULL, "TOKEND_REDIS_URL", CONFIG_STRING, NULL, CONFIG_TEXT, CONFIG_FIELD(redis_url),
      "redis://[user:password@]host:port[/db] or unix:///path: limits and dictionaries shared by instances" },
    { "redis_timeout_ms", NULL, "TOKEND_REDIS_TIMEOUT_MS", CONFIG_LONG, "50", 1, 60000, CONFIG_FIELD(redis_timeout_ms),
      "deadline of one Redis command (then the store's on-error policy)" },
    { "max_header_bytes", NULL, "TOKEND_MAX_HEADER_BYTES", CONFIG_SIZE, "8192", 1024, 1L << 20,
      CONFIG_FIELD(max_header_bytes), "request line and headers; past it 414 or 431" },
    { "max_body_bytes", NULL, "TOKEND_MAX_BODY_BYTES", CONFIG_SIZE, "65536", 0, 1L << 30, CONFIG_FIELD(max_body_bytes),
      "larger request bodies get 413" },
    { "max_query_args", NULL, "TOKEND_MAX_QUERY_ARGS", CONFIG_UINT, "64", 1, 10000, CONFIG_FIELD(max_query_args),
      "more query arguments get 400" },
    { "max_connections", NULL, "TOKEND_MAX_CONNECTIONS", CONFIG_UINT, "10000", 1, 1000000,
      CONFIG_FIELD(max_connections), "open client connections, all workers together" },
    { "max_connections_per_ip", NULL, "TOKEND_MAX_CONNECTIONS_PER_IP", CONFIG_UINT, "64", 0, 1000000,
      CONFIG_FIELD(max_connections_per_ip), "open connections from one address (0 = no limit)" },
    { "request_timeout_s", NULL, "TOKEND_REQUEST_TIMEOUT_S", CONFIG_UINT, "30", 0, 86400,
      CONFIG_FIELD(request_timeout_s), "a request must arrive whole within this (0 = no limit)" },
    { "idle_timeout_s", NULL, "TOKEND_IDLE_TIMEOUT_S", CONFIG_UINT, "60", 0, 86400, CONFIG_FIELD(idle_timeout_s),
      "connections with no traffic are closed after this" },
    { "rate_limit_clients", NULL, "TOKEND_RATE_LIMIT_CLIENTS", CONFIG_SIZE, "100000", 100, 100000000,
      CONFIG_FIELD(rate_limit_clients), "clients each rate limiter tracks at most (unless its max_keys says)" },
    { "lua_memory_mb", NULL, "TOKEND_LUA_MEMORY_MB", CONFIG_MIB, "64", 1, 65536, CONFIG_FIELD(lua_memory_bytes),
      "memory cap of each worker's Lua state" },
    { "lua_instructions", NULL, "TOKEND_LUA_INSTRUCTIONS", CONFIG_LONG, "10000000", 10000, 1L << 40,
      CONFIG_FIELD(lua_instruction_limit), "Lua VM instructions one request may run" },
    { "drain_timeout_s", NULL, "TOKEND_DRAIN_TIMEOUT_S", CONFIG_UINT, "10", 0, 3600, CONFIG_FIELD(drain_timeout_s),
      "on SIGTERM/SIGINT, how long requests in flight may finish" },
    { "env_file", "env-file", NULL, CONFIG_STRING, ".env when present", CONFIG_TEXT, CONFIG_FIELD(env_file),
      "settings file; scripts read its other names with tokend.env" },
    { "watch", "watch", NULL, CONFIG_SWITCH, NULL, CONFIG_TEXT, CONFIG_FIELD(watch_script),
      "reload the script when its file changes (development)" },
    { "dev", "dev", NULL, CONFIG_SWITCH, NULL, CONFIG_TEXT, CONFIG_FIELD(dev),
      "a developer's machine: all addresses, HTTPS beside HTTP, live reload, URLs for your phone" },
};
const size_t config_count = sizeof config_settings / sizeof config_settings[0];

const config_setting *config_by_env(const char *env) {
    for (size_t i = 0; i < config_count; i++)
        if (config_settings[i].env && strcmp(config_settings[i].env, env) == 0) return &config_settings[i];
    return NULL;
}

const config_setting *config_by_flag(const char *flag) {
    for (size_t i = 0; i < config_count; i++)
        if (config_settings[i].flag && strcmp(config_settings[i].flag, flag) == 0) return &config_settings[i];
    return NULL;
}

const config_setting *config_by_name(const char *name) {
    for (size_t i = 0; i < config_count; i++)
        if (strcmp(config_settings[i].name, name) == 0) return &config_settings[i];
    return NULL;
}

/* Parses a whole decimal integer in [min, max]: digits, after a '-' for a negative one;
 * no spaces, no '+'. Returns 0 or -1. */
static int config_parse_long(const char *s, long min, long max, long *out) {
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)s[s[0] == '-'])) return -1;
    long v = strtol(s, &end, 10);
    if (*end || errno || v < min || v > max) return -1;
    *out = v;
    return 0;
}

int config_set(tokend_config *cfg, const config_setting *s, const char *value, int from_flag, char *err,
               size_t errlen) {
    void *field = (char *)cfg + s->offset;
    const char *shown = from_flag ? s->flag : s->env;
    long n = 0;
    switch (s->type) {
    case CONFIG_STRING:
    case CONFIG_SECRET: *(const char **)field = value && *value ? value : NULL; return 0;
    case CONFIG_LEVEL:
        if ((n = log_level_from_name(value)) < 0) {
            snprintf(err, errlen, "log level must be debug, info, warn or error (got \"%s\")", value);
            return -1;
        }
        *(int *)field = (int)n;
        return 0;
    case CONFIG_FORMAT:
        if (strcmp(value, "json") != 0 && strcmp(value, "text") != 0) {
            snprintf(err, errlen, "log format must be text or json (got \"%s\")", value);
            return -1;
        }
        *(int *)field = strcmp(value, "json") == 0;
        return 0;
    case CONFIG_SWITCH: *(int *)field = 1; return 0;
    default: break;
    }
    if (config_parse_long(value, s->min, s->max, &n) < 0) {
        snprintf(err, errlen, "%s%s must be an integer between %ld and %ld (got \"%s\")", from_flag ? "--" : "", shown,
                 s->min, s->max, value);
        return -1;
    }
    switch (s->type) {
    case CONFIG_INT: *(int *)field = (int)n; break;
    case CONFIG_UINT: *(unsigned int *)field = (unsigned int)n; break;
    case CONFIG_LONG: *(long *)field = n; break;
    case CONFIG_SIZE: *(size_t *)field = (size_t)n; break;
    case CONFIG_MIB: *(size_t *)field = (size_t)n << 20; break;
    default: break;
    }
    return 0;
}

void tokend_config_init(tokend_config *cfg) {
    char err[200];
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < config_count; i++)
        if (config_settings[i].dflt && config_settings[i].offset != offsetof(tokend_config, env_file))
            config_set(cfg, &config_settings[i], config_settings[i].dflt, 0, err, sizeof err);
}

/* Checks the text of a setting that is a list or a URL: parsed as it will be used, and
 * freed. Returns 0, or -1 with err naming the setting. */
static int config_check_text(const tokend_config *c, char *err, size_t errlen) {
    char why[600];
    url_endpoints endpoints;
    url_region regions[URL_REGION_MAX];
    size_t nregions;
    redis_target redis;
    netaddr_nets *nets = NULL;
    policy_hosts *hosts = NULL;
    const char *name = NULL;
    if (c->streaming_url && url_streaming_endpoints(c->streaming_url, &endpoints, why, sizeof why) != URL_OK)
        name = "ASSEMBLYAI_STREAMING_URL";
    else if (url_regions(c->region_urls, regions, &nregions, why, sizeof why) != URL_OK)
        name = "ASSEMBLYAI_REGION_URLS";
    else if (c->agents_url && url_agent_endpoints(c->agents_url, &endpoints, why, sizeof why) != URL_OK)
        name = "ASSEMBLYAI_AGENTS_URL";
    else if (c->redis_url && redis_parse_url(c->redis_url, &redis, why, sizeof why) < 0) name = "TOKEND_REDIS_URL";
    else if (netaddr_nets_parse(c->trusted_proxies, &nets, why, sizeof why) < 0) name = "TOKEND_TRUSTED_PROXIES";
    else if (policy_hosts_parse(c->allowed_hosts, c->host, &hosts, why, sizeof why) < 0) name = "TOKEND_ALLOWED_HOSTS";
    netaddr_nets_free(nets);
    policy_hosts_free(hosts);
    explicit_bzero(&redis, sizeof redis);
    if (!name) return 0;
    snprintf(err, errlen, "%s: %s", name, why);
    return -1;
}

/* Checks that the HTTPS settings go together. Returns 0, or -1 with err. */
static int config_check_tls(const tokend_config *c, char *err, size_t errlen) {
    if (c->tls_port < 0 || c->tls_port > 65535) {
        snprintf(err, errlen, "TLS port %d is out of range 1..65535", c->tls_port);
        return -1;
    }
    if (!c->tls_cert != !c->tls_key) {
        snprintf(err, errlen, "%s",
                 c->tls_cert ? "TOKEND_TLS_CERT (--tls-cert) needs TOKEND_TLS_KEY (--tls-key)"
                             : "TOKEND_TLS_KEY (--tls-key) needs TOKEND_TLS_CERT (--tls-cert)");
        return -1;
    }
    if (c->tls_port && !c->tls_cert && !c->dev) {
        snprintf(err, errlen, "TOKEND_TLS_PORT (--tls-port) needs a certificate (--tls-cert and --tls-key) or --dev");
        return -1;
    }
    if (c->tls_port && c->tls_port == c->port) {
        snprintf(err, errlen,
                 "TOKEND_TLS_PORT (--tls-port) must differ from PORT (--port); to serve HTTPS alone, "
                 "give --tls-cert and --tls-key without --tls-port");
        return -1;
    }
    return 0;
}

int tokend_config_check(const tokend_config *c, char *err, size_t errlen) {
    if (c->port < 0 || c->port > 65535) {
        snprintf(err, errlen, "port %d is out of range 0..65535", c->port);
        return TOKEND_ERR;
    }
    if (c->workers < 0 || c->workers > CONFIG_MAX_WORKERS) {
        snprintf(err, errlen, "workers %d is out of range 0..%d", c->workers, CONFIG_MAX_WORKERS);
        return TOKEND_ERR;
    }
    if (!c->host || !c->script || !c->public_dir || !c->streaming_url) {
        snprintf(err, errlen,
                 "host, script, public folder and streaming URL must be set (tokend_config_init "
                 "fills the defaults)");
        return TOKEND_ERR;
    }
    if (config_check_tls(c, err, errlen) < 0) return TOKEND_ERR;
    return config_check_text(c, err, errlen) < 0 ? TOKEND_ERR : TOKEND_OK;
}

/* The address of s's field in cfg, when it is a string. */
static const char **config_string_field(tokend_config *cfg, const config_setting *s) {
    if (s->type != CONFIG_STRING && s->type != CONFIG_SECRET) return NULL;
    return (const char **)(void *)((char *)cfg + s->offset);
}

int config_copy(tokend_config *dst, const tokend_config *src) {
    int rc = 0;
    *dst = *src;
    for (size_t i = 0; i < config_count; i++) {
        const char **field = config_string_field(dst, &config_settings[i]);
        if (!field) continue;
        const char *text = *field;
        *field = NULL;
        if (text && *text && !(*field = strdup(text))) rc = -1;
    }
    if (rc < 0) config_free(dst);
    return rc;
}

void config_free(tokend_config *c) {
    for (size_t i = 0; i < config_count; i++) {
        const char **field = config_string_field(c, &config_settings[i]);
        if (!field || !*field) continue;
        explicit_bzero((char *)*field, strlen(*field));
        free((char *)*field);
        *field = NULL;
    }
}
