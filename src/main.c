/* main.c: the tokend command line: flags, .env, signals; the only place that prints and exits. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "config.h"
#include "envfile.h"
#include "log.h"
#include "notify.h"
#include "tokend.h"

#define EXIT_USAGE 2
#ifndef TOKEND_DATADIR
#define TOKEND_DATADIR "/usr/local/share/tokend"
#endif

/* Options of the command line only (the settings' options come from the table). */
enum { MAIN_OPT_CHECK = 1000, MAIN_OPT_VERSION, MAIN_OPT_HELP, MAIN_OPT_SETTING };

static tokend_server *main_server;
static volatile sig_atomic_t main_stop_requests;

static void main_on_signal(int sig) {
    if (sig == SIGHUP) {
        if (main_server) tokend_server_reload(main_server);
        return;
    }
    if (++main_stop_requests > 1) _exit(1);     /* a second Ctrl-C does not wait for the drain */
    notify_send("STOPPING=1");
    if (main_server) tokend_server_stop(main_server);
}

static void main_usage(FILE *to) {
    fprintf(to, "usage: tokend [options]\n\n"
                "Serves short-lived AssemblyAI streaming tokens and a static front end, scripted in Lua.\n\n");
    for (size_t i = 0; i < config_count; i++) {
        const config_setting *s = &config_settings[i];
        if (!s->flag) continue;
        char opt[64];
        snprintf(opt, sizeof opt, "--%s%s", s->flag, s->type == CONFIG_SWITCH ? "" : " VALUE");
        fprintf(to, "  %-30s %s", opt, s->help);
        if (s->env) fprintf(to, " (env %s", s->env);
        if (s->dflt) fprintf(to, "%sdefault %s", s->env ? "; " : " (", s->dflt);
        fprintf(to, "%s\n", s->env || s->dflt ? ")" : "");
    }
    fprintf(to, "  %-30s %s\n  %-30s %s\n  %-30s %s\n\n",
            "--check", "load the script, report errors as file:line, exit 0 or 1",
            "--version", "print the version", "--help", "print this help");
    fprintf(to, "Settings from the environment or .env (flags win over the environment, which wins over .env):\n");
    for (size_t i = 0; i < config_count; i++) {
        const config_setting *s = &config_settings[i];
        if (!s->env) continue;
        fprintf(to, "  %-30s %s", s->env, s->help);
        if (s->dflt) fprintf(to, " (default %s)", s->dflt);
        fputc('\n', to);
    }
    fprintf(to, "\nSIGHUP reloads the script; SIGTERM and SIGINT stop gracefully.\n");
}

/* Says what stopped tokend: a JSON line under --log-format json, else "tokend: msg". */
static void main_fail(const char *msg) {
    if (log_is_json()) log_fields(LOG_ERROR, "log", msg, NULL, 0);
    else fprintf(stderr, "tokend: %s\n", msg);
}

/* A command-line mistake: the message, then the usage (a pointer to it in JSON). */
static void main_fail_usage(const char *msg) {
    char line[512];
    snprintf(line, sizeof line, "%s%s", msg, log_is_json() ? " (tokend --help lists the options)" : "");
    main_fail(line);
    if (!log_is_json()) main_usage(stderr);
}

/* Writes one of tokend's own lines on stdout (the start line, --check's verdict): as a
 * JSON object of this type under --log-format json, else as msg. */
static void main_say(const char *type, const char *msg, const log_field *fields, size_t n) {
    char line[4096];
    if (log_is_json()) log_format(line, sizeof line, LOG_INFO, type, msg, fields, n);
    printf("%s\n", log_is_json() ? line : msg);
    fflush(stdout);
}

/* Whether the lines are JSON, as far as the command line and the environment tell
 * before the settings are read (so that even their errors come out as JSON). */
static int main_json_hint(int argc, char **argv, const envfile *env) {
    const char *v = env ? envfile_lookup(env, "TOKEND_LOG_FORMAT") : getenv("TOKEND_LOG_FORMAT");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--log-format") == 0 && i + 1 < argc) v = argv[i + 1];
        else if (strncmp(argv[i], "--log-format=", 13) == 0) v = argv[i] + 13;
    }
    return v && strcmp(v, "json") == 0;
}

/* Without --script or --public (nor their variables) and without scripts/routes.lua or
 * public/ in the working folder, the installed copies are used: <prefix>/share/tokend,
 * found next to the binary (<prefix>/bin), else where this build installs them. */
static void main_installed_defaults(tokend_config *cfg, int script_given, int public_given, char *script_buf,
                                    char *public_buf, size_t buflen) {
    char exe[4096], share[4200];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    const char *roots[2] = { NULL, TOKEND_DATADIR };
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        snprintf(share, sizeof share, "%s/../share/tokend", exe);
        roots[0] = share;
    }
    for (int i = 0; i < 2; i++) {
        if (!roots[i]) continue;
        if (!script_given && access(cfg->script, F_OK) != 0) {
            snprintf(script_buf, buflen, "%s/scripts/routes.lua", roots[i]);
            if (access(script_buf, R_OK) == 0) {
                cfg->script = script_buf;
                log_msg(LOG_INFO, "no scripts/routes.lua here: using the installed %s", script_buf);
            }
        }
        if (!public_given && access(cfg->public_dir, F_OK) != 0) {
            snprintf(public_buf, buflen, "%s/public", roots[i]);
            if (access(public_buf, R_OK | X_OK) == 0) {
                cfg->public_dir = public_buf;
                log_msg(LOG_INFO, "no public folder here: serving the installed %s", public_buf);
            }
        }
    }
}

/* Raises the open-file limit to its maximum: each connection holds a descriptor. */
static void main_raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Copies the key, trimmed of spaces; NULL when empty. */
static char *main_take_key(const char *value) {
    if (!value) return NULL;
    while (*value == ' ' || *value == '\t' || *value == '\n' || *value == '\r') value++;
    size_t n = strlen(value);
    while (n && (value[n - 1] == ' ' || value[n - 1] == '\t' || value[n - 1] == '\n' || value[n - 1] == '\r')) n--;
    return n ? strndup(value, n) : NULL;
}

/* Builds getopt's table: one option per setting with a flag, then the command line's own. */
static struct option *main_options(void) {
    static const struct option own[] = {
        { "check", no_argument, 0, MAIN_OPT_CHECK },
        { "version", no_argument, 0, MAIN_OPT_VERSION }, { "help", no_argument, 0, MAIN_OPT_HELP },
    };
    size_t nown = sizeof own / sizeof own[0], n = 0;
    struct option *opts = calloc(config_count + nown + 1, sizeof *opts);
    if (!opts) return NULL;
    for (size_t i = 0; i < config_count; i++) {
        const config_setting *s = &config_settings[i];
        if (!s->flag) continue;
        opts[n++] = (struct option){ s->flag, s->type == CONFIG_SWITCH ? no_argument : required_argument, 0,
                                     MAIN_OPT_SETTING + (int)i };
    }
    memcpy(opts + n, own, sizeof own);
    return opts;
}

int main(int argc, char **argv) {
    const char *env_file = NULL;
    int check = 0, rc = 1;
    char err[4096];
    envfile *env = NULL;
    char *key = NULL;
    tokend_config cfg;

    char script_path[4300], public_path[4300];
    int script_given = 0, public_given = 0;
    struct option *longopts = main_options();
    const char **flag_values = calloc(config_count, sizeof *flag_values);
    log_configure(LOG_INFO, main_json_hint(argc, argv, NULL));
    if (!longopts || !flag_values) {
        main_fail("out of memory");
        goto out;
    }
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case MAIN_OPT_CHECK: check = 1; break;
        case MAIN_OPT_VERSION: printf("tokend %s\n", TOKEND_VERSION); rc = 0; goto out;
        case MAIN_OPT_HELP: main_usage(stdout); rc = 0; goto out;
        default:
            if (opt >= MAIN_OPT_SETTING && opt < MAIN_OPT_SETTING + (int)config_count) {
                flag_values[opt - MAIN_OPT_SETTING] = optarg ? optarg : "1";
                break;
            }
            snprintf(err, sizeof err, "%s %s", optopt ? "option needs a value:" : "unknown option:", argv[optind - 1]);
            main_fail_usage(err);
            goto out_usage;
        }
    }
    if (optind < argc) {
        snprintf(err, sizeof err, "unexpected argument \"%s\"", argv[optind]);
        main_fail_usage(err);
        goto out_usage;
    }

    env_file = flag_values[config_by_flag("env-file") - config_settings];
    if (!env_file && access(".env", F_OK) == 0) env_file = ".env";
    if (env_file && envfile_load(env_file, &env, err, sizeof err) < 0) {
        main_fail(err);
        goto out_usage;
    }
    log_configure(LOG_INFO, main_json_hint(argc, argv, env));

    /* The key lives only in tokend's memory from here on: out of the environment and of
     * the block the kernel shows as /proc/PID/environ (before any other setting points
     * into the environment), and no core dump can hold it. */
    key = main_take_key(envfile_lookup(env, "ASSEMBLYAI_API_KEY"));
    if (envfile_forget("ASSEMBLYAI_API_KEY") < 0) {
        main_fail("out of memory");
        goto out;
    }
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    struct rlimit no_core = { 0, 0 };
    setrlimit(RLIMIT_CORE, &no_core);

    /* Every setting: its flag, else the real environment, else .env, else its default. */
    tokend_config_init(&cfg);
    cfg.api_key = key;
    cfg.env_file = env_file;
    for (size_t i = 0; i < config_count; i++) {
        const config_setting *s = &config_settings[i];
        const char *value = flag_values[i] ? flag_values[i] : s->env ? envfile_lookup(env, s->env) : NULL;
        if (s->type == CONFIG_SECRET || !value || (!flag_values[i] && !*value)) continue;  /* NAME= is unset */
        if (config_set(&cfg, s, value, flag_values[i] != NULL, err, sizeof err) < 0) {
            main_fail(err);
            goto out_usage;
        }
        script_given |= s->offset == offsetof(tokend_config, script);
        public_given |= s->offset == offsetof(tokend_config, public_dir);
    }
    log_configure(cfg.log_level, cfg.log_json);
    /* Settings files every user may read: the env file, and under systemd the file the
     * unit's credential is a copy of (the copy itself is the service's alone). */
    const char *settings_files[2] = { env_file, getenv("TOKEND_ENV_FILE_SOURCE") };
    for (int i = 0; i < 2; i++) {
        unsigned int mode;
        if (settings_files[i] && envfile_world_readable(settings_files[i], &mode) == 1)
            log_msg(LOG_WARN, "%s is readable by every user (mode %04o) and may hold the API key: chmod 600 it",
                    settings_files[i], mode);
    }
    main_installed_defaults(&cfg, script_given, public_given, script_path, public_path, sizeof script_path);

    if (check) {
        if (tokend_script_check(&cfg, err, sizeof err) != TOKEND_OK) {
            if (log_is_json()) main_fail(err);
            else fprintf(stderr, "%s\n", err);        /* file:line: message, as compilers write it */
            goto out;
        }
        snprintf(err, sizeof err, "%s: ok", cfg.script);
        main_say("check", err, NULL, 0);
        rc = 0;
        goto out;
    }

    signal(SIGPIPE, SIG_IGN);
    main_raise_nofile();
    if (tokend_server_create(&cfg, &main_server, err, sizeof err) != TOKEND_OK) {
        main_fail(err);
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
    char url[400], line[500];
    snprintf(url, sizeof url, "http://%s:%d", hostpart, tokend_server_port(main_server));
    snprintf(line, sizeof line, "tokend listening on %s", url);
    log_field start[] = { { "url", url, 0 }, { "version", TOKEND_VERSION, 0 } };
    main_say("start", line, start, 2);
    if (notify_open() < 0) log_msg(LOG_WARN, "NOTIFY_SOCKET is set but cannot be used: systemd will not hear that tokend is ready");
    snprintf(line, sizeof line, "READY=1\nSTATUS=listening on %s", url);
    notify_send(line);
    if (tokend_server_run(main_server, err, sizeof err) != TOKEND_OK) {
        main_fail(err);
        goto out;
    }
    log_msg(LOG_INFO, "stopped");
    rc = 0;
    goto out;
out_usage:
    rc = EXIT_USAGE;
out:
    notify_close();
    tokend_server_free(main_server);
    main_server = NULL;
    if (key) {
        explicit_bzero(key, strlen(key));
        free(key);
    }
    envfile_free(env);
    free(longopts);
    free(flag_values);
    return rc;
}
