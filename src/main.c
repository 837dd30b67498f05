/* main.c: the tokend command line: flags, .env, signals; the only place that prints and exits. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "tokend.h"

#define EXIT_USAGE 2

static tokend_server *main_server;
static volatile sig_atomic_t main_stop_requests;

static void main_on_signal(int sig) {
    if (sig == SIGHUP) {
        if (main_server) tokend_server_reload(main_server);
        return;
    }
    if (++main_stop_requests > 1) _exit(1);     /* a second Ctrl-C does not wait for the drain */
    if (main_server) tokend_server_stop(main_server);
}

static void main_usage(FILE *to) {
    fprintf(to,
        "usage: tokend [options]\n"
        "\n"
        "Serves short-lived AssemblyAI streaming tokens and a static front end, scripted in Lua.\n"
        "\n"
        "  --port N               TCP port (env PORT; default 8000; 0 picks a free one)\n"
        "  --host ADDR            address to listen on (env HOST; default 127.0.0.1)\n"
        "  --script FILE          routes script (env TOKEND_SCRIPT; default scripts/routes.lua)\n"
        "  --public DIR           static folder for the script (env TOKEND_PUBLIC; default public)\n"
        "  --env-file FILE        settings file (default .env when present)\n"
        "  --workers N            event loops (env TOKEND_WORKERS; default one per core)\n"
        "  --upstream-timeout-ms N  deadline of a token request (env TOKEND_UPSTREAM_TIMEOUT_MS; default 10000)\n"
        "  --log-level LEVEL      debug, info, warn or error (env TOKEND_LOG_LEVEL; default info)\n"
        "  --log-format FORMAT    text or json (env TOKEND_LOG_FORMAT; default text)\n"
        "  --trusted-proxies LIST addresses/CIDRs whose X-Forwarded-For is believed\n"
        "                         (env TOKEND_TRUSTED_PROXIES; default none)\n"
        "  --watch                reload the script when its file changes (development)\n"
        "  --check                load the script, report errors as file:line, exit 0 or 1\n"
        "  --version              print the version\n"
        "  --help                 print this help\n"
        "\n"
        "Environment (or .env): ASSEMBLYAI_API_KEY, ASSEMBLYAI_STREAMING_URL (default\n"
        "https://streaming.assemblyai.com), CURL_CA_BUNDLE, TOKEND_MAX_BODY_BYTES,\n"
        "TOKEND_MAX_HEADER_BYTES, TOKEND_MAX_QUERY_ARGS, TOKEND_MAX_CONNECTIONS,\n"
        "TOKEND_MAX_CONNECTIONS_PER_IP, TOKEND_IDLE_TIMEOUT_S, TOKEND_REQUEST_TIMEOUT_S,\n"
        "TOKEND_RATE_LIMIT_CLIENTS, TOKEND_LUA_MEMORY_MB, TOKEND_LUA_INSTRUCTIONS,\n"
        "TOKEND_DRAIN_TIMEOUT_S. SIGHUP reloads the script; SIGTERM and SIGINT stop gracefully.\n"
        "The real environment wins over .env; flags win over both.\n");
}

/* Parses a whole decimal integer in [min, max]. Returns 0 or -1. */
static int main_parse_long(const char *s, long min, long max, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < min || v > max) return -1;
    *out = v;
    return 0;
}

/* Every setting: its flag (NULL when env-only), environment name, and where it lands. */
enum { S_PORT, S_HOST, S_SCRIPT, S_PUBLIC, S_WORKERS, S_UPSTREAM_TIMEOUT, S_LOG_LEVEL, S_LOG_FORMAT,
       S_TRUSTED_PROXIES, S_STREAMING_URL, S_CA_BUNDLE, S_MAX_BODY, S_MAX_CONN, S_MAX_CONN_IP, S_IDLE,
       S_REQUEST_TIMEOUT, S_MAX_HEADER, S_MAX_QUERY, S_RATE_CLIENTS, S_LUA_MEM, S_LUA_INS, S_DRAIN,
       S_API_KEY, S_COUNT };

static const struct main_setting {
    const char *flag, *env;
    long min, max;      /* integer range; min > max for strings */
} main_settings[S_COUNT] = {
    [S_PORT] = { "port", "PORT", 0, 65535 },
    [S_HOST] = { "host", "HOST", 1, 0 },
    [S_SCRIPT] = { "script", "TOKEND_SCRIPT", 1, 0 },
    [S_PUBLIC] = { "public", "TOKEND_PUBLIC", 1, 0 },
    [S_WORKERS] = { "workers", "TOKEND_WORKERS", 0, 256 },
    [S_UPSTREAM_TIMEOUT] = { "upstream-timeout-ms", "TOKEND_UPSTREAM_TIMEOUT_MS", 100, 600000 },
    [S_LOG_LEVEL] = { "log-level", "TOKEND_LOG_LEVEL", 1, 0 },
    [S_LOG_FORMAT] = { "log-format", "TOKEND_LOG_FORMAT", 1, 0 },
    [S_TRUSTED_PROXIES] = { "trusted-proxies", "TOKEND_TRUSTED_PROXIES", 1, 0 },
    [S_STREAMING_URL] = { NULL, "ASSEMBLYAI_STREAMING_URL", 1, 0 },
    [S_CA_BUNDLE] = { NULL, "CURL_CA_BUNDLE", 1, 0 },
    [S_MAX_BODY] = { NULL, "TOKEND_MAX_BODY_BYTES", 0, 1L << 30 },
    [S_MAX_CONN] = { NULL, "TOKEND_MAX_CONNECTIONS", 1, 1000000 },
    [S_MAX_CONN_IP] = { NULL, "TOKEND_MAX_CONNECTIONS_PER_IP", 0, 1000000 },
    [S_IDLE] = { NULL, "TOKEND_IDLE_TIMEOUT_S", 0, 86400 },
    [S_REQUEST_TIMEOUT] = { NULL, "TOKEND_REQUEST_TIMEOUT_S", 0, 86400 },
    [S_MAX_HEADER] = { NULL, "TOKEND_MAX_HEADER_BYTES", 1024, 1L << 20 },
    [S_MAX_QUERY] = { NULL, "TOKEND_MAX_QUERY_ARGS", 1, 10000 },
    [S_RATE_CLIENTS] = { NULL, "TOKEND_RATE_LIMIT_CLIENTS", 100, 100000000 },
    [S_LUA_MEM] = { NULL, "TOKEND_LUA_MEMORY_MB", 1, 65536 },
    [S_LUA_INS] = { NULL, "TOKEND_LUA_INSTRUCTIONS", 10000, 1L << 40 },
    [S_DRAIN] = { NULL, "TOKEND_DRAIN_TIMEOUT_S", 0, 3600 },
    [S_API_KEY] = { NULL, "ASSEMBLYAI_API_KEY", 1, 0 },
};

/* Raises the open-file limit to its maximum: each connection holds a descriptor. */
static void main_raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Copies the key out of the environment and removes it from there, trimmed of spaces. */
static char *main_take_key(const char *value) {
    if (!value) return NULL;
    while (*value == ' ' || *value == '\t' || *value == '\n' || *value == '\r') value++;
    size_t n = strlen(value);
    while (n && (value[n - 1] == ' ' || value[n - 1] == '\t' || value[n - 1] == '\n' || value[n - 1] == '\r')) n--;
    return n ? strndup(value, n) : NULL;
}

static int main_known_setting(const char *name) {
    for (int i = 0; i < S_COUNT; i++)
        if (strcmp(main_settings[i].env, name) == 0) return 1;
    return 0;
}

int main(int argc, char **argv) {
    const char *flag_values[S_COUNT] = { 0 };
    const char *env_file = NULL;
    int check = 0, watch = 0, rc = 1;
    char err[4096];
    config_env *env = NULL;
    char *key = NULL;
    tokend_config cfg;

    static const struct option longopts[] = {
        { "port", required_argument, 0, 'p' }, { "host", required_argument, 0, 'H' },
        { "script", required_argument, 0, 's' }, { "public", required_argument, 0, 'P' },
        { "env-file", required_argument, 0, 'e' }, { "workers", required_argument, 0, 'w' },
        { "upstream-timeout-ms", required_argument, 0, 't' }, { "log-level", required_argument, 0, 'l' },
        { "log-format", required_argument, 0, 'f' }, { "check", no_argument, 0, 'c' },
        { "trusted-proxies", required_argument, 0, 'T' }, { "watch", no_argument, 0, 'W' },
        { "version", no_argument, 0, 'V' }, { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p': flag_values[S_PORT] = optarg; break;
        case 'H': flag_values[S_HOST] = optarg; break;
        case 's': flag_values[S_SCRIPT] = optarg; break;
        case 'P': flag_values[S_PUBLIC] = optarg; break;
        case 'w': flag_values[S_WORKERS] = optarg; break;
        case 't': flag_values[S_UPSTREAM_TIMEOUT] = optarg; break;
        case 'l': flag_values[S_LOG_LEVEL] = optarg; break;
        case 'f': flag_values[S_LOG_FORMAT] = optarg; break;
        case 'T': flag_values[S_TRUSTED_PROXIES] = optarg; break;
        case 'e': env_file = optarg; break;
        case 'c': check = 1; break;
        case 'W': watch = 1; break;
        case 'V': printf("tokend %s\n", TOKEND_VERSION); return 0;
        case 'h': main_usage(stdout); return 0;
        default:
            fprintf(stderr, "tokend: %s %s\n", optopt ? "option needs a value:" : "unknown option:",
                    argv[optind - 1]);
            main_usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tokend: unexpected argument \"%s\"\n", argv[optind]);
        main_usage(stderr);
        return EXIT_USAGE;
    }

    if (env_file || access(".env", F_OK) == 0) {
        if (config_env_load(env_file ? env_file : ".env", &env, err, sizeof err) < 0) {
            fprintf(stderr, "tokend: %s\n", err);
            return EXIT_USAGE;
        }
    }

    /* Resolve every setting: flag, then real environment, then .env. */
    const char *values[S_COUNT];
    long numbers[S_COUNT];
    for (int i = 0; i < S_COUNT; i++) {
        const struct main_setting *s = &main_settings[i];
        values[i] = flag_values[i] ? flag_values[i] : config_lookup(env, s->env);
        if (!flag_values[i] && values[i] && !*values[i]) values[i] = NULL;   /* NAME= means unset */
        numbers[i] = -1;
        if (values[i] && s->min <= s->max && main_parse_long(values[i], s->min, s->max, &numbers[i]) < 0) {
            fprintf(stderr, "tokend: %s%s must be an integer between %ld and %ld (got \"%s\")\n",
                    flag_values[i] ? "--" : "", flag_values[i] ? s->flag : s->env, s->min, s->max, values[i]);
            goto out_usage;
        }
    }
    for (size_t i = 0; i < config_env_count(env); i++) {
        if (!main_known_setting(config_env_name(env, i)))
            fprintf(stderr, "tokend: note: %s sets %s, which tokend does not use\n",
                    env_file ? env_file : ".env", config_env_name(env, i));
    }
    key = main_take_key(values[S_API_KEY]);
    values[S_API_KEY] = NULL;
    /* The key lives only in tokend's memory from here on: wipe it where the kernel shows
     * the initial environment (/proc/PID/environ), then drop the variable. */
    char *in_env = getenv("ASSEMBLYAI_API_KEY");
    if (in_env) explicit_bzero(in_env, strlen(in_env));
    unsetenv("ASSEMBLYAI_API_KEY");

    tokend_config_init(&cfg);
    if (numbers[S_PORT] >= 0) cfg.port = (int)numbers[S_PORT];
    if (values[S_HOST]) cfg.host = values[S_HOST];
    if (values[S_SCRIPT]) cfg.script = values[S_SCRIPT];
    if (values[S_PUBLIC]) cfg.public_dir = values[S_PUBLIC];
    if (numbers[S_WORKERS] >= 0) cfg.workers = (int)numbers[S_WORKERS];
    if (numbers[S_UPSTREAM_TIMEOUT] >= 0) cfg.upstream_timeout_ms = numbers[S_UPSTREAM_TIMEOUT];
    if (values[S_STREAMING_URL]) cfg.streaming_url = values[S_STREAMING_URL];
    if (values[S_CA_BUNDLE]) cfg.ca_file = values[S_CA_BUNDLE];
    if (numbers[S_MAX_BODY] >= 0) cfg.max_body_bytes = (size_t)numbers[S_MAX_BODY];
    if (numbers[S_MAX_CONN] >= 0) cfg.max_connections = (unsigned int)numbers[S_MAX_CONN];
    if (numbers[S_MAX_CONN_IP] >= 0) cfg.max_connections_per_ip = (unsigned int)numbers[S_MAX_CONN_IP];
    if (numbers[S_IDLE] >= 0) cfg.idle_timeout_s = (unsigned int)numbers[S_IDLE];
    if (numbers[S_REQUEST_TIMEOUT] >= 0) cfg.request_timeout_s = (unsigned int)numbers[S_REQUEST_TIMEOUT];
    if (numbers[S_MAX_HEADER] >= 0) cfg.max_header_bytes = (size_t)numbers[S_MAX_HEADER];
    if (numbers[S_MAX_QUERY] >= 0) cfg.max_query_args = (unsigned int)numbers[S_MAX_QUERY];
    if (numbers[S_RATE_CLIENTS] >= 0) cfg.rate_limit_clients = (size_t)numbers[S_RATE_CLIENTS];
    if (values[S_TRUSTED_PROXIES]) cfg.trusted_proxies = values[S_TRUSTED_PROXIES];
    if (numbers[S_LUA_MEM] >= 0) cfg.lua_memory_bytes = (size_t)numbers[S_LUA_MEM] << 20;
    if (numbers[S_LUA_INS] >= 0) cfg.lua_instruction_limit = numbers[S_LUA_INS];
    if (numbers[S_DRAIN] >= 0) cfg.drain_timeout_s = (unsigned int)numbers[S_DRAIN];
    cfg.watch_script = watch;
    cfg.api_key = key;
    if (values[S_LOG_LEVEL]) {
        cfg.log_level = log_level_from_name(values[S_LOG_LEVEL]);
        if (cfg.log_level < 0) {
            fprintf(stderr, "tokend: log level must be debug, info, warn or error (got \"%s\")\n", values[S_LOG_LEVEL]);
            goto out_usage;
        }
    }
    if (values[S_LOG_FORMAT]) {
        if (strcmp(values[S_LOG_FORMAT], "json") != 0 && strcmp(values[S_LOG_FORMAT], "text") != 0) {
            fprintf(stderr, "tokend: log format must be text or json (got \"%s\")\n", values[S_LOG_FORMAT]);
            goto out_usage;
        }
        cfg.log_json = strcmp(values[S_LOG_FORMAT], "json") == 0;
    }

    if (check) {
        if (tokend_script_check(&cfg, err, sizeof err) != TOKEND_OK) {
            fprintf(stderr, "%s\n", err);
            goto out;
        }
        printf("%s: ok\n", cfg.script);
        rc = 0;
        goto out;
    }

    signal(SIGPIPE, SIG_IGN);
    main_raise_nofile();
    if (tokend_server_create(&cfg, &main_server, err, sizeof err) != TOKEND_OK) {
        fprintf(stderr, "tokend: %s\n", err);
        goto out;
    }
    if (key) {
        explicit_bzero(key, strlen(key));   /* the server holds its own copy */
    } else {
        log_msg(LOG_WARN, "no AssemblyAI API key configured: set ASSEMBLYAI_API_KEY in the environment or "
                          "in .env; until then /token answers 503 (static files are served)");
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = main_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    const char *shown = strchr(cfg.host, ':') ? "[%s]" : "%s";
    char hostpart[300];
    snprintf(hostpart, sizeof hostpart, shown, cfg.host);
    printf("tokend listening on http://%s:%d\n", hostpart, tokend_server_port(main_server));
    fflush(stdout);
    if (tokend_server_run(main_server, err, sizeof err) != TOKEND_OK) {
        fprintf(stderr, "tokend: %s\n", err);
        goto out;
    }
    log_msg(LOG_INFO, "stopped");
    rc = 0;
    goto out;
out_usage:
    rc = EXIT_USAGE;
out:
    tokend_server_free(main_server);
    main_server = NULL;
    if (key) {
        explicit_bzero(key, strlen(key));
        free(key);
    }
    config_env_free(env);
    return rc;
}
