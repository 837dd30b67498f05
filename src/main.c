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
#include <sys/stat.h>
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

/* What one run of tokend works with, step by step. */
typedef struct main_run {
    int argc;
    char **argv;
    struct option *longopts;
    const char **flag_values;       /* per setting: its flag's value, or NULL */
    int check;                      /* --check */
    const char *env_file;
    envfile *env;
    char *key;                      /* the API key, in this process's memory only */
    tokend_config cfg;
    char script_path[4300], public_path[4300];
    char err[4096];
} main_run;

#define MAIN_GO (-1)                /* a step's result: go on to the next step */

/* Reads the command line into m->flag_values and m->check. Returns MAIN_GO, or the exit
 * status (--help, --version, a usage error). */
static int main_parse_flags(main_run *m) {
    int opt;
    opterr = 0;
    while ((opt = getopt_long(m->argc, m->argv, "", m->longopts, NULL)) != -1) {
        switch (opt) {
        case MAIN_OPT_CHECK: m->check = 1; break;
        case MAIN_OPT_VERSION: printf("tokend %s\n", TOKEND_VERSION); return 0;
        case MAIN_OPT_HELP: main_usage(stdout); return 0;
        default:
            if (opt >= MAIN_OPT_SETTING && opt < MAIN_OPT_SETTING + (int)config_count) {
                m->flag_values[opt - MAIN_OPT_SETTING] = optarg ? optarg : "1";
                break;
            }
            snprintf(m->err, sizeof m->err, "%s %s", optopt ? "option needs a value:" : "unknown option:",
                     m->argv[optind - 1]);
            main_fail_usage(m->err);
            return EXIT_USAGE;
        }
    }
    if (optind < m->argc) {
        snprintf(m->err, sizeof m->err, "unexpected argument \"%s\"", m->argv[optind]);
        main_fail_usage(m->err);
        return EXIT_USAGE;
    }
    return MAIN_GO;
}

/* Loads the settings file (--env-file, else ./.env when present), then takes the key into
 * this process's memory only: out of the environment and of the block the kernel shows as
 * /proc/PID/environ (before any other setting points into the environment), and no core
 * dump can hold it. Returns MAIN_GO or the exit status. */
static int main_load_env(main_run *m) {
    m->env_file = m->flag_values[config_by_flag("env-file") - config_settings];
    struct stat st;
    if (!m->env_file && lstat(".env", &st) == 0) m->env_file = ".env";     /* a folder or a dead link too: said */
    if (m->env_file && envfile_load(m->env_file, &m->env, m->err, sizeof m->err) < 0) {
        main_fail(m->err);
        return EXIT_USAGE;
    }
    log_configure(LOG_INFO, main_json_hint(m->argc, m->argv, m->env));
    m->key = main_take_key(envfile_lookup(m->env, "ASSEMBLYAI_API_KEY"));
    if (envfile_forget("ASSEMBLYAI_API_KEY") < 0) {
        main_fail("out of memory");
        return 1;
    }
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    struct rlimit no_core = { 0, 0 };
    setrlimit(RLIMIT_CORE, &no_core);
    return MAIN_GO;
}

/* Warns of settings files every user may read: the env file, and under systemd the file
 * the unit's credential is a copy of (the copy itself is the service's alone). */
static void main_warn_readable(const char *env_file) {
    const char *settings_files[2] = { env_file, getenv("TOKEND_ENV_FILE_SOURCE") };
    for (int i = 0; i < 2; i++) {
        unsigned int mode;
        if (settings_files[i] && envfile_world_readable(settings_files[i], &mode) == 1)
            log_msg(LOG_WARN, "%s is readable by every user (mode %04o) and may hold the API key: chmod 600 it",
                    settings_files[i], mode);
    }
}

/* Every setting: its flag, else the real environment, else .env, else its default; then
 * the installed script and page when the working folder has none. Returns MAIN_GO or the
 * exit status (a bad value: 2). */
static int main_resolve_settings(main_run *m) {
    int script_given = 0, public_given = 0;
    tokend_config_init(&m->cfg);
    m->cfg.api_key = m->key;
    m->cfg.env_file = m->env_file;
    for (size_t i = 0; i < config_count; i++) {
        const config_setting *s = &config_settings[i];
        const char *flag = m->flag_values[i], *value = flag ? flag : s->env ? envfile_lookup(m->env, s->env) : NULL;
        if (s->type == CONFIG_SECRET || !value || (!flag && !*value)) continue;    /* NAME= is unset */
        if (config_set(&m->cfg, s, value, flag != NULL, m->err, sizeof m->err) < 0) {
            main_fail(m->err);
            return EXIT_USAGE;
        }
        script_given |= s->offset == offsetof(tokend_config, script);
        public_given |= s->offset == offsetof(tokend_config, public_dir);
    }
    log_configure(m->cfg.log_level, m->cfg.log_json);
    if (tokend_config_check(&m->cfg, m->err, sizeof m->err) != TOKEND_OK) {
        main_fail(m->err);
        return EXIT_USAGE;
    }
    main_warn_readable(m->env_file);
    main_installed_defaults(&m->cfg, script_given, public_given, m->script_path, m->public_path,
                            sizeof m->script_path);
    return MAIN_GO;
}

/* --check: loads the script and says whether it is good. Returns the exit status. */
static int main_check(main_run *m) {
    if (tokend_script_check(&m->cfg, m->err, sizeof m->err) != TOKEND_OK) {
        if (log_is_json()) main_fail(m->err);
        else fprintf(stderr, "%s\n", m->err);        /* file:line: message, as compilers write it */
        return 1;
    }
    snprintf(m->err, sizeof m->err, "%s: ok", m->cfg.script);
    main_say("check", m->err, NULL, 0);
    return 0;
}

/* Says where tokend listens on host (stdout; systemd hears READY=1) once it is made. */
static void main_announce(const char *host) {
    const char *shown = strchr(host, ':') ? "[%s]" : "%s";
    char hostpart[300], url[400], line[500];
    snprintf(hostpart, sizeof hostpart, shown, host);
    snprintf(url, sizeof url, "http://%s:%d", hostpart, tokend_server_port(main_server));
    snprintf(line, sizeof line, "tokend listening on %s", url);
    log_field start[] = { { "url", url, 0 }, { "version", TOKEND_VERSION, 0 } };
    main_say("start", line, start, 2);
    if (notify_open() < 0) log_msg(LOG_WARN, "NOTIFY_SOCKET is set but cannot be used: systemd will not hear that tokend is ready");
    snprintf(line, sizeof line, "READY=1\nSTATUS=listening on %s", url);
    notify_send(line);
}

/* Creates the server, answers signals and serves until stopped. Returns the exit status. */
static int main_serve(main_run *m) {
    signal(SIGPIPE, SIG_IGN);
    main_raise_nofile();
    if (tokend_server_create(&m->cfg, &main_server, m->err, sizeof m->err) != TOKEND_OK) {
        main_fail(m->err);
        return 1;
    }
    if (m->key) {
        explicit_bzero(m->key, strlen(m->key));     /* the server holds its own copy */
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
    main_announce(m->cfg.host);
    if (tokend_server_run(main_server, m->err, sizeof m->err) != TOKEND_OK) {
        main_fail(m->err);
        return 1;
    }
    log_msg(LOG_INFO, "stopped");
    return 0;
}

/* Runs the steps in order until one gives an exit status. */
static int main_steps(main_run *m) {
    int rc;
    if (!m->longopts || !m->flag_values) {
        main_fail("out of memory");
        return 1;
    }
    if ((rc = main_parse_flags(m)) != MAIN_GO || (rc = main_load_env(m)) != MAIN_GO ||
        (rc = main_resolve_settings(m)) != MAIN_GO)
        return rc;
    return m->check ? main_check(m) : main_serve(m);
}

int main(int argc, char **argv) {
    static main_run m;      /* large buffers: not on the stack */
    m.argc = argc;
    m.argv = argv;
    m.longopts = main_options();
    m.flag_values = calloc(config_count, sizeof *m.flag_values);
    log_configure(LOG_INFO, main_json_hint(argc, argv, NULL));
    int rc = main_steps(&m);
    notify_close();
    tokend_server_free(main_server);
    main_server = NULL;
    if (m.key) {
        explicit_bzero(m.key, strlen(m.key));
        free(m.key);
    }
    envfile_free(m.env);
    free(m.longopts);
    free(m.flag_values);
    return rc;
}
