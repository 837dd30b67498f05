/* main.c: the tokend command line: flags, .env, signals; the only place that prints and exits. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <getopt.h>
#include <signal.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "devca.h"
#include "envfile.h"
#include "log.h"
#include "notify.h"
#include "qrterm.h"
#include "tokend.h"

#define EXIT_USAGE 2
#ifndef TOKEND_DATADIR
#define TOKEND_DATADIR "/usr/local/share/tokend"
#endif

/* Options of the command line only (the settings' options come from the table). */
enum { MAIN_OPT_CHECK = 1000, MAIN_OPT_DEV_CA, MAIN_OPT_VERSION, MAIN_OPT_HELP, MAIN_OPT_SETTING };

static tokend_server *main_server;
static volatile sig_atomic_t main_stop_requests;

static void main_on_signal(int sig) {
    if (sig == SIGHUP) {
        if (main_server) tokend_server_reload(main_server);
        return;
    }
    if (++main_stop_requests > 1) _exit(1); /* a second Ctrl-C does not wait for the drain */
    notify_send("STOPPING=1");
    if (main_server) tokend_server_stop(main_server);
}

static void main_usage(FILE *to) {
    fprintf(to,
            "usage: tokend [options]\n\n"
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
    fprintf(to, "  %-30s %s\n  %-30s %s\n  %-30s %s\n  %-30s %s\n\n", "--check",
            "load the script, report errors as file:line, exit 0 or 1", "--dev-ca",
            "make the development CA if needed, say where it is and how to trust it", "--version", "print the version",
            "--help", "print this help");
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
        { "dev-ca", no_argument, 0, MAIN_OPT_DEV_CA },
        { "version", no_argument, 0, MAIN_OPT_VERSION },
        { "help", no_argument, 0, MAIN_OPT_HELP },
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
    const char **flag_values; /* per setting: its flag's value, or NULL */
    int check;                /* --check */
    int dev_ca;               /* --dev-ca */
    const char *env_file;
    envfile *env;
    char *key; /* the API key, in this process's memory only */
    tokend_config cfg;
    char script_path[4300], public_path[4300];
    char err[4096];
} main_run;

#define MAIN_GO (-1) /* a step's result: go on to the next step */

/* Reads the command line into m->flag_values and m->check. Returns MAIN_GO, or the exit
 * status (--help, --version, a usage error). */
static int main_parse_flags(main_run *m) {
    int opt;
    opterr = 0;
    while ((opt = getopt_long(m->argc, m->argv, "", m->longopts, NULL)) != -1) {
        switch (opt) {
        case MAIN_OPT_CHECK: m->check = 1; break;
        case MAIN_OPT_DEV_CA: m->dev_ca = 1; break;
        case MAIN_OPT_VERSION: printf("tokend %s\n", TOKEND_VERSION); return 0;
        case MAIN_OPT_HELP: main_usage(stdout); return 0;
        default:
            if (opt >= MAIN_OPT_SETTING && opt < MAIN_OPT_SETTING + (int)config_count) {
                m->flag_values[opt - MAIN_OPT_SETTING] = optarg ? optarg : "1";
                break;
            }
            snprintf(m->err, sizeof m->err, "%s %s",
                     optopt ? "option needs a value:" : "unknown option:", m->argv[optind - 1]);
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
    if (!m->env_file && lstat(".env", &st) == 0) m->env_file = ".env"; /* a folder or a dead link too: said */
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

/* --dev listens on every address, unless --host says otherwise on the command line (HOST
 * in .env, as .env.example has it, is set aside: a phone could not reach loopback). */
static void main_dev_host(main_run *m, int host_flag) {
    if (!m->cfg.dev || host_flag) return;
    if (strcmp(m->cfg.host, "127.0.0.1") != 0 && strcmp(m->cfg.host, "0.0.0.0") != 0)
        log_msg(LOG_INFO, "note: --dev listens on every address, not on HOST=%s (give --host to choose)", m->cfg.host);
    m->cfg.host = "0.0.0.0";
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
    int script_given = 0, public_given = 0, host_flag = 0;
    tokend_config_init(&m->cfg);
    m->cfg.api_key = m->key;
    m->cfg.env_file = m->env_file;
    for (size_t i = 0; i < config_count; i++) {
        const config_setting *s = &config_settings[i];
        const char *flag = m->flag_values[i], *value = flag ? flag : s->env ? envfile_lookup(m->env, s->env) : NULL;
        if (s->type == CONFIG_SECRET || !value || (!flag && !*value)) continue; /* NAME= is unset */
        if (config_set(&m->cfg, s, value, flag != NULL, m->err, sizeof m->err) < 0) {
            main_fail(m->err);
            return EXIT_USAGE;
        }
        script_given |= s->offset == offsetof(tokend_config, script);
        public_given |= s->offset == offsetof(tokend_config, public_dir);
        host_flag |= flag && s->offset == offsetof(tokend_config, host);
    }
    main_dev_host(m, host_flag);
    log_configure(m->cfg.log_level, m->cfg.log_json);
    if (tokend_config_check(&m->cfg, m->err, sizeof m->err) != TOKEND_OK) {
        main_fail(m->err);
        return EXIT_USAGE;
    }
    main_warn_readable(m->env_file);
    main_installed_defaults(&m->cfg, script_given, public_given, m->script_path, m->public_path, sizeof m->script_path);
    return MAIN_GO;
}

/* --check: loads the script and says whether it is good. Returns the exit status. */
static int main_check(main_run *m) {
    if (tokend_script_check(&m->cfg, m->err, sizeof m->err) != TOKEND_OK) {
        if (log_is_json()) main_fail(m->err);
        else fprintf(stderr, "%s\n", m->err); /* file:line: message, as compilers write it */
        return 1;
    }
    snprintf(m->err, sizeof m->err, "%s: ok", m->cfg.script);
    main_say("check", m->err, NULL, 0);
    return 0;
}

/* Reads the certificate files, or makes the development CA and its certificate, before the
 * server starts: a file that cannot be read or does not match, or a CA folder others may
 * read, is a setting to fix (exit 2, naming the file). Returns MAIN_GO or the exit status. */
static int main_check_tls(main_run *m) {
    devca_tls t;
    if (devca_tls_for(&m->cfg, &t, m->err, sizeof m->err) < 0) {
        main_fail(m->err);
        return EXIT_USAGE;
    }
    devca_tls_free(&t);
    return MAIN_GO;
}

/* --dev-ca: makes the development CA when there is none, and says where it is and how each
 * kind of device trusts it. Returns the exit status. */
static int main_dev_ca(main_run *m) {
    char dir[PATH_MAX], fingerprint[96], expires[16];
    char *cert = NULL, *key = NULL, *ca = NULL;
    cert_names *names = malloc(sizeof *names);
    int rc = EXIT_USAGE;
    if (!names) {
        main_fail("out of memory");
        return 1;
    }
    devca_names(m->cfg.allowed_hosts, names);
    if (devca_dir(dir, sizeof dir, m->err, sizeof m->err) < 0 ||
        devca_ensure(dir, names, &cert, &key, &ca, m->err, sizeof m->err) < 0 ||
        cert_describe(ca, fingerprint, expires) < 0) {
        main_fail(m->err);
        goto out;
    }
    printf("The development CA: %s/ca.crt\n"
           "  SHA-256 fingerprint %s\n  valid until %s\n\n"
           "Its key (ca.key beside it, readable by you alone) can sign a certificate for any site on every device\n"
           "that trusts the CA: keep it private. To stop trusting it, remove it from each device, then delete\n"
           "the folder (the next --dev makes a new one).\n\n"
           "Trust it once on each device that opens tokend --dev over HTTPS (check the fingerprint on the device):\n"
           "- Chromium and Chrome on Linux: certutil -d sql:$HOME/.pki/nssdb -A -t \"C,,\" -n \"tokend development "
           "CA\" "
           "-i %s/ca.crt\n  (certutil is in Debian's libnss3-tools; restart the browser)\n"
           "- Firefox: Settings, Privacy & Security, Certificates, View Certificates, Authorities, Import: ca.crt,\n"
           "  \"Trust this CA to identify websites\"\n"
           "- curl and the system's other programs (Debian): sudo cp %s/ca.crt "
           "/usr/local/share/ca-certificates/tokend-dev-ca.crt\n  && sudo update-ca-certificates\n"
           "- Android: copy ca.crt to the phone (USB, or with the phone plugged in: adb reverse tcp:%d tcp:%d, then "
           "open\n"
           "  http://localhost:%d/__tokend/ca.crt on the phone while tokend --dev runs), then Settings, Security,\n"
           "  Encryption & credentials, Install a certificate, CA certificate\n"
           "- iPhone and iPad: AirDrop or mail ca.crt to the device, open it, install the profile (Settings, General,\n"
           "  VPN & Device Management), then turn on full trust in Settings, General, About, Certificate Trust "
           "Settings\n\n"
           "tokend --dev serves this certificate at /__tokend/ca.crt to this machine only (its loopback address):\n"
           "fetched over the network without HTTPS, anyone on the way could swap it for their own.\n",
           dir, fingerprint, expires, dir, dir, m->cfg.port, m->cfg.port, m->cfg.port);
    fflush(stdout);
    rc = 0;
out:
    cert_pem_free(cert);
    cert_pem_free(key);
    cert_pem_free(ca);
    free(names);
    return rc;
}

/* "[v6]" or the host as it goes in a URL. */
static void main_url_host(const char *host, char *out, size_t outlen) {
    snprintf(out, outlen, strchr(host, ':') ? "[%s]" : "%s", host);
}

/* 1 when host is a loopback address or name. */
static int main_loopback(const char *host) {
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0 || strcmp(host, "localhost") == 0;
}

/* Under --dev: the URLs to open on this machine and on the network (the HTTPS ones, with a
 * QR code of the first for a phone when stdout is a terminal), or why a phone cannot reach
 * the server. */
static void main_announce_dev(const char *host) {
    int port = tokend_server_port(main_server), tls = tokend_server_tls_port(main_server);
    char hostpart[300], line[4096], network[4096] = "", first[400] = "";
    cert_names *names = calloc(1, sizeof *names);
    if (!names) return;
    if (main_loopback(host)) {
        log_msg(LOG_WARN,
                "--dev with --host %s: only this machine can reach the server, a phone on your network "
                "cannot (without --host, --dev listens on every address)",
                host);
    } else if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0) {
        devca_network_names(names);
    } else {
        cert_names_add(names, host);
    }
    size_t o = 0;
    for (size_t i = 0; i < names->n; i++) {
        if (strcmp(host, "0.0.0.0") == 0 && strchr(names->v[i], ':')) continue; /* not listening on IPv6 */
        main_url_host(names->v[i], hostpart, sizeof hostpart);
        char url[400];
        snprintf(url, sizeof url, "%s://%s:%d", tls ? "https" : "http", hostpart, tls ? tls : port);
        if (!*first) snprintf(first, sizeof first, "%s", url);
        o += (size_t)snprintf(network + o, sizeof network - o, "%s%s", o ? " " : "", url);
        if (o >= sizeof network) break;
    }
    if (log_is_json()) {
        log_field f[] = { { "local", "", 0 }, { "network", network, 0 } };
        snprintf(line, sizeof line, "%s://localhost:%d", tls ? "https" : "http", tls ? tls : port);
        f[0].value = line;
        main_say("dev", "development server", f, 2);
    } else {
        printf("  on this machine: %s://localhost:%d\n", tls ? "https" : "http", tls ? tls : port);
        for (char *u = strtok(network, " "), *sep = "  on your network: "; u;
             u = strtok(NULL, " "), sep = "                   ")
            printf("%s%s\n", sep, u);
        if (tls) printf("  trust the development CA once on each device: tokend --dev-ca\n");
        char *qr = *first && isatty(STDOUT_FILENO) ? qrterm_draw(first) : NULL;
        if (qr) printf("%s", qr);
        free(qr);
        fflush(stdout);
    }
    free(names);
}

/* Says where tokend listens on host (stdout; systemd hears READY=1) once it is made. */
static void main_announce(const char *host, int dev) {
    char hostpart[300], url[400], tls_url[400] = "", line[1000];
    int port = tokend_server_port(main_server), tls = tokend_server_tls_port(main_server);
    main_url_host(host, hostpart, sizeof hostpart);
    snprintf(url, sizeof url, "%s://%s:%d", tls == port ? "https" : "http", hostpart, port);
    if (tls && tls != port) snprintf(tls_url, sizeof tls_url, "https://%s:%d", hostpart, tls);
    snprintf(line, sizeof line, "tokend listening on %s%s%s", url, *tls_url ? " and " : "", tls_url);
    log_field start[] = { { "url", url, 0 }, { "version", TOKEND_VERSION, 0 }, { "tls_url", tls_url, 0 } };
    main_say("start", line, start, *tls_url ? 3 : 2);
    if (dev) main_announce_dev(host);
    if (notify_open() < 0)
        log_msg(LOG_WARN, "NOTIFY_SOCKET is set but cannot be used: systemd will not hear that tokend is ready");
    snprintf(line, sizeof line, "READY=1\nSTATUS=listening on %s%s%s", url, *tls_url ? " and " : "", tls_url);
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
        explicit_bzero(m->key, strlen(m->key)); /* the server holds its own copy */
    } else {
        log_msg(LOG_WARN,
                "no AssemblyAI API key configured: set ASSEMBLYAI_API_KEY in the environment or "
                "in .env; until then /token answers 503 (static files are served)");
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = main_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    main_announce(m->cfg.host, m->cfg.dev);
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
    if (m->check) return main_check(m);
    if (m->dev_ca) return main_dev_ca(m);
    if ((rc = main_check_tls(m)) != MAIN_GO) return rc;
    return main_serve(m);
}

int main(int argc, char **argv) {
    static main_run m; /* large buffers: not on the stack */
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
