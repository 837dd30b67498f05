/* manpage.c: writes tokend(8) in roff from the settings table that drives --help and the README. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "config.h"

#ifndef MANPAGE_DATADIR
#define MANPAGE_DATADIR "/usr/local/share/tokend"
#endif
#ifndef MANPAGE_DOCDIR
#define MANPAGE_DOCDIR "/usr/local/share/doc/tokend"
#endif
#ifndef MANPAGE_UNITDIR
#define MANPAGE_UNITDIR "/usr/local/lib/systemd/system"
#endif

/* Writes text for roff: a backslash as \e, a hyphen as \- (what a reader types), and a
 * line that would start with a control character guarded by \&. */
static void manpage_text(FILE *to, const char *text) {
    if (*text == '.' || *text == '\'') fputs("\\&", to);
    for (const char *p = text; *p; p++) {
        if (*p == '\\') fputs("\\e", to);
        else if (*p == '-') fputs("\\-", to);
        else fputc(*p, to);
    }
}

/* One tagged paragraph: the tag in bold (with an italic VALUE when it takes one), then
 * the help text. */
static void manpage_tag(FILE *to, const char *tag, int takes_value, const char *help) {
    fputs(".TP\n\\fB", to);
    manpage_text(to, tag);
    fputs(takes_value ? "\\fR \\fIVALUE\\fR\n" : "\\fR\n", to);
    manpage_text(to, help);
}

/* A setting, as its flag (with its variable) or as its variable (with its flag), and
 * its default when it has one. */
static void manpage_setting(FILE *to, const config_setting *s, int as_flag) {
    char tag[80];
    snprintf(tag, sizeof tag, "%s%s", as_flag ? "--" : "", as_flag ? s->flag : s->env);
    manpage_tag(to, tag, as_flag && s->type != CONFIG_SWITCH, s->help);
    fputc('.', to);
    const char *other = as_flag ? s->env : s->flag;
    if (other) {
        fputs(as_flag ? " Environment: \\fB" : " Flag: \\fB\\-\\-", to);
        manpage_text(to, other);
        fputs("\\fR.", to);
    }
    if (s->dflt) {
        fputs(" Default: ", to);
        manpage_text(to, s->dflt);
        fputc('.', to);
    }
    fputc('\n', to);
}

/* Writes the whole page to `to`. Returns 0, or -1 when writing failed. */
static int manpage_write(FILE *to) {
    fprintf(to,
            ".\\\" tokend(8), generated from the settings table in src/config.c: do not edit.\n"
            ".TH TOKEND 8 \"\" \"tokend %s\" \"System Administration\"\n"
            ".nh\n.ad l\n"
            ".SH NAME\ntokend \\- short\\-lived AssemblyAI streaming tokens, scripted in Lua\n"
            ".SH SYNOPSIS\n.B tokend\n[\\fIoptions\\fR]\n.br\n.B tokend \\-\\-check\n[\\fIoptions\\fR]\n"
            ".SH DESCRIPTION\n"
            "tokend mints short\\-lived tokens for AssemblyAI's Universal\\-Streaming API, so that a browser "
            "can transcribe speech live without ever seeing the permanent API key. Routes, the expiry and "
            "abuse policy and static files are defined by a Lua script; tokend serves a transcription page "
            "from its public folder.\n"
            ".PP\n"
            "Each setting comes from a flag, the environment, or a settings file (\\fI.env\\fR in the "
            "working folder, or \\fB\\-\\-env\\-file\\fR); a flag wins over the environment, which wins over "
            "the file. An empty value counts as unset. Numbers are digits only; a bad value exits 2 with "
            "the setting's name. Without an API key tokend still starts and \\fB/token\\fR answers 503.\n"
            ".SH OPTIONS\n",
            TOKEND_VERSION);
    for (size_t i = 0; i < config_count; i++) {
        const config_setting *s = &config_settings[i];
        if (s->flag) manpage_setting(to, s, 1);
    }
    /* The command line's own options (main.c); the structure test compares them with --help. */
    static const char *const own[][2] = {
        { "--check", "load the script, report errors as file:line, exit 0 or 1" },
        { "--dev-ca", "make the development CA if needed, say where it is and how to trust it" },
        { "--version", "print the version" },
        { "--help", "print the options and settings" },
    };
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) {
        manpage_tag(to, own[i][0], 0, own[i][1]);
        fputc('\n', to);
    }
    fputs(".SH ENVIRONMENT\nEach of these may also be set in the settings file.\n", to);
    for (size_t i = 0; i < config_count; i++) {
        const config_setting *s = &config_settings[i];
        if (s->env) manpage_setting(to, s, 0);
    }
    fprintf(to,
            ".SH FILES\n"
            ".TP\n\\fI/etc/tokend/tokend.env\\fR\n"
            "The settings of the systemd units (root's, mode 0600); they reach the service through "
            "\\fBLoadCredential=\\fR. tokend warns at start when every user may read its settings file.\n"
            ".TP\n\\fI%s/scripts/routes.lua\\fR\n"
            "The default routes script, used when neither \\fB\\-\\-script\\fR nor "
            "\\fIscripts/routes.lua\\fR in the working folder is there.\n"
            ".TP\n\\fI%s/public\\fR\n"
            "The transcription page, served likewise without \\fB\\-\\-public\\fR.\n"
            ".TP\n\\fI%s/tokend.service\\fR, \\fI%s/tokend@.service\\fR\n"
            "The hardened systemd units; \\fBtokend@\\fIPORT\\fB.service\\fR runs one of several "
            "instances on its port.\n"
            ".TP\n\\fI%s/README.md\\fR\n"
            "The user manual: the Lua API, deployment, security and operations.\n"
            ".SH SIGNALS\n"
            "SIGHUP reloads the script in every worker (a script that fails to load leaves the old one "
            "serving); SIGTERM and SIGINT stop accepting and let requests in flight finish.\n"
            ".SH EXIT STATUS\n"
            "0 on a clean stop or a passing check, 1 when the server or the script fails, 2 for a bad "
            "command line or setting.\n"
            ".SH EXAMPLES\n"
            ".nf\n"
            "echo ASSEMBLYAI_API_KEY=... >> /etc/tokend/tokend.env\n"
            "systemctl start tokend\n"
            "curl \\-s localhost:8000/token\n"
            ".fi\n"
            ".SH SEE ALSO\n"
            ".BR systemctl (1),\n"
            ".BR systemd.exec (5)\n",
            MANPAGE_DATADIR, MANPAGE_DATADIR, MANPAGE_UNITDIR, MANPAGE_UNITDIR, MANPAGE_DOCDIR);
    return fflush(to) == 0 && !ferror(to) ? 0 : -1;
}

/* tokend_manpage FILE: writes the page to FILE. */
int main(int argc, char **argv) {
    FILE *to = argc == 2 ? fopen(argv[1], "w") : NULL;
    if (!to) {
        fprintf(stderr, "usage: tokend_manpage FILE (%s)\n", argc == 2 ? strerror(errno) : "one argument");
        return 1;
    }
    int rc = manpage_write(to);
    if (fclose(to) != 0 || rc < 0) {
        fprintf(stderr, "tokend_manpage: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    return 0;
}
