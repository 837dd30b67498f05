/* main.c: the tokend command line: flags, .env, signals; the only place that prints and exits. */
#define _GNU_SOURCE
#include <errno.h>
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
#include "tokend.h"

#define EXIT_USAGE 2

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

    struct option *longopts = main_options();
    const char **flag_values = calloc(config_count, sizeof *flag_values);
    if (!longopts || !flag_values) {
        fprintf(stderr, "tokend: out of memory\n");
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
            fprintf(stderr, "tokend: %s %s\n", optopt ? "option needs a value:" : "unknown option:",
                    argv[optind - 1]);
            main_usage(stderr);
            goto out_usage;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tokend: unexpected argument \"%s\"\n", argv[optind]);
        main_usage(stderr);
        goto out_usage;
    }

    env_file = flag_values[config_by_flag("env-file") - config_settings];
    if (!env_file && access(".env", F_OK) == 0) env_file = ".env";
    if (env_file && envfile_load(env_file, &env, err, sizeof err) < 0) {
        fprintf(stderr, "tokend: %s\n", err);
        goto out_usage;
    }

    /* The key lives only in tokend's memory from here on: out of the environment and of
     * the block the kernel shows as /proc/PID/environ (before any other setting points
     * into the environment), and no core dump can hold it. */
    key = main_take_key(envfile_lookup(env, "ASSEMBLYAI_API_KEY"));
    if (envfile_forget("ASSEMBLYAI_API_KEY") < 0) {
        fprintf(stderr, "tokend: out of memory\n");
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
            fprintf(stderr, "tokend: %s\n", err);
            goto out_usage;
        }
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
    envfile_free(env);
    free(longopts);
    free(flag_values);
    return rc;
}
