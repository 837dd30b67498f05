/* devca.c: the development CA (mkcert's approach): made on first use in the user's data folder, kept private, its leaf remade when the machine's names change. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <limits.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "devca.h"
#include "log.h"

#define DEVCA_LEAF_DAYS 397 /* the most browsers accept */
#define DEVCA_RENEW_DAYS 30 /* a leaf expiring sooner is made again */

int devca_dir(char *out, size_t outlen, char *err, size_t errlen) {
    const char *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
    int n;
    /* The XDG specification ignores a relative XDG_DATA_HOME; "/" is no one's home. */
    if (xdg && xdg[0] == '/') n = snprintf(out, outlen, "%s/tokend", xdg);
    else if (home && home[0] == '/' && home[1]) n = snprintf(out, outlen, "%s/.local/share/tokend", home);
    else {
        snprintf(err, errlen,
                 "no data folder for the development CA (neither HOME nor XDG_DATA_HOME is set): --dev "
                 "is for a developer's session, not a service (give --tls-cert and --tls-key instead)");
        return -1;
    }
    if (n < 0 || (size_t)n >= outlen) {
        snprintf(err, errlen, "the data folder's path is too long");
        return -1;
    }
    return 0;
}

/* <hostname>.local, for mDNS (the first label of the host name), or "" when it has none. */
static void devca_mdns_name(char *out, size_t outlen) {
    char host[HOST_NAME_MAX + 1] = "";
    out[0] = '\0';
    if (gethostname(host, sizeof host) < 0) return;
    host[sizeof host - 1] = '\0';
    size_t n = strcspn(host, ".");
    for (size_t i = 0; i < n; i++) {
        host[i] = (char)tolower((unsigned char)host[i]);
        if (!isalnum((unsigned char)host[i]) && host[i] != '-') return;
    }
    if (n == 0 || (n == 9 && strncmp(host, "localhost", 9) == 0)) return;
    snprintf(out, outlen, "%.*s.local", (int)n, host);
}

void devca_network_names(cert_names *out) {
    struct ifaddrs *all = NULL;
    char text[INET6_ADDRSTRLEN], mdns[HOST_NAME_MAX + 8];
    if (getifaddrs(&all) == 0) {
        for (int family = 0; family < 2; family++) { /* IPv4 first: what a phone is likelier to reach */
            for (struct ifaddrs *a = all; a; a = a->ifa_next) {
                if (!a->ifa_addr || !(a->ifa_flags & IFF_UP) || (a->ifa_flags & IFF_LOOPBACK)) continue;
                if (family == 0 && a->ifa_addr->sa_family == AF_INET) {
                    inet_ntop(AF_INET, &((struct sockaddr_in *)a->ifa_addr)->sin_addr, text, sizeof text);
                } else if (family == 1 && a->ifa_addr->sa_family == AF_INET6) {
                    const struct in6_addr *v6 = &((struct sockaddr_in6 *)a->ifa_addr)->sin6_addr;
                    if (IN6_IS_ADDR_LINKLOCAL(v6) || IN6_IS_ADDR_LOOPBACK(v6) || IN6_IS_ADDR_V4MAPPED(v6)) continue;
                    inet_ntop(AF_INET6, v6, text, sizeof text);
                } else {
                    continue;
                }
                cert_names_add(out, text);
            }
        }
        freeifaddrs(all);
    }
    devca_mdns_name(mdns, sizeof mdns);
    if (*mdns) cert_names_add(out, mdns);
}

void devca_names(const char *extra, cert_names *out) {
    memset(out, 0, sizeof *out);
    cert_names_add(out, "localhost");
    cert_names_add(out, "127.0.0.1");
    cert_names_add(out, "::1");
    devca_network_names(out);
    for (const char *s = extra ? extra : ""; *s;) {
        while (*s == ',' || *s == ' ' || *s == '\t') s++;
        size_t n = strcspn(s, ", \t");
        char name[CERT_NAME_LEN];
        if (n && n < sizeof name && !(n == 1 && s[0] == '*')) {
            memcpy(name, s, n);
            name[n] = '\0';
            cert_names_add(out, name);
        }
        s += n;
    }
}

/* Makes dir and its missing parents (0700, as the XDG specification asks), then checks
 * that dir is a folder of the user's that nobody else may read. Returns 0, or -1 with err
 * (with the command that fixes it). */
static int devca_private_dir(const char *dir, char *err, size_t errlen) {
    char path[PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(path, 0700) < 0 && errno != EEXIST) goto fail;
        *p = '/';
    }
    if (mkdir(path, 0700) < 0 && errno != EEXIST) goto fail;
    if (lstat(dir, &st) < 0) goto fail;
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "the development CA's folder \"%s\" is not a folder (a link or a file): remove it", dir);
        return -1;
    }
    if (st.st_uid != geteuid()) {
        snprintf(err, errlen, "the development CA's folder \"%s\" belongs to another user (uid %u): remove it", dir,
                 (unsigned)st.st_uid);
        return -1;
    }
    if (st.st_mode & 077) {
        snprintf(err, errlen,
                 "the development CA's folder \"%s\" may be read by others (mode %04o), and its key "
                 "signs certificates your browsers trust: chmod 700 \"%s\"",
                 dir, (unsigned)(st.st_mode & 07777), dir);
        return -1;
    }
    return 0;
fail:
    snprintf(err, errlen, "cannot make the development CA's folder \"%s\": %s", path, strerror(errno));
    return -1;
}

/* Checks that the key file at path, when present, is a file of the user's that nobody
 * else may read. Returns 1 when present, 0 when absent, -1 with err. */
static int devca_private_key(const char *path, char *err, size_t errlen) {
    struct stat st;
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT) return 0;
        snprintf(err, errlen, "\"%s\": %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
        snprintf(err, errlen, "\"%s\" is %s: remove it", path, S_ISREG(st.st_mode) ? "another user's" : "not a file");
        return -1;
    }
    if (st.st_mode & 077) {
        snprintf(err, errlen, "the key \"%s\" may be read by others (mode %04o): chmod 600 \"%s\"", path,
                 (unsigned)(st.st_mode & 07777), path);
        return -1;
    }
    return 1;
}

/* Writes text as dir/name with mode: a new file renamed over the old one. Returns 0, or
 * -1 with err. */
static int devca_write(const char *dir, const char *name, const char *text, mode_t mode, char *err, size_t errlen) {
    char tmp[PATH_MAX], path[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/.%s.new", dir, name);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(tmp); /* left by a run that stopped half-way */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    size_t len = strlen(text);
    if (fd < 0 || write(fd, text, len) != (ssize_t)len || fsync(fd) < 0 || close(fd) < 0 || rename(tmp, path) < 0) {
        snprintf(err, errlen, "cannot write \"%s\": %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Reads dir/name (NULL with err when it cannot be read). */
static char *devca_read(const char *dir, const char *name, char *err, size_t errlen) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return cert_read_file(path, err, errlen);
}

/* The CA in dir: read, or made when there is none. Returns 0 with both PEMs, or -1. */
static int devca_the_ca(const char *dir, char **cert, char **key, char *err, size_t errlen) {
    char path[PATH_MAX], cert_path[PATH_MAX];
    snprintf(path, sizeof path, "%s/ca.key", dir);
    snprintf(cert_path, sizeof cert_path, "%s/ca.crt", dir);
    int has_key = devca_private_key(path, err, errlen);
    if (has_key < 0) return -1;
    int has_cert = access(cert_path, F_OK) == 0;
    if (has_key && has_cert) {
        if (!(*cert = devca_read(dir, "ca.crt", err, errlen)) || !(*key = devca_read(dir, "ca.key", err, errlen)))
            return -1;
        if (cert_pair_fits(*cert, *key, 1)) return 0;
        snprintf(err, errlen,
                 "the development CA in \"%s\" cannot be used (expired, or its files do not match): "
                 "remove the folder to make a new one, then trust the new one",
                 dir);
        return -1;
    }
    if (has_key || has_cert) {
        snprintf(err, errlen,
                 "\"%s\" holds only half of a CA (ca.crt and ca.key go together): remove the folder to "
                 "make a new one",
                 dir);
        return -1;
    }
    char cn[200], host[HOST_NAME_MAX + 1] = "?";
    const struct passwd *pw = getpwuid(geteuid());
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    snprintf(cn, sizeof cn, "tokend development CA (%s@%.64s)", pw ? pw->pw_name : "?", host);
    if (cert_make_ca(cn, cert, key, err, errlen) < 0 || devca_write(dir, "ca.key", *key, 0600, err, errlen) < 0 ||
        devca_write(dir, "ca.crt", *cert, 0644, err, errlen) < 0)
        return -1;
    log_msg(LOG_INFO, "made a development CA in %s; trust it once on each device: tokend --dev-ca tells how", dir);
    return 0;
}

/* Whether the leaf in dir (when there is one) fits: signed by the CA, for names, not about
 * to expire, its key its own. Returns 1 with its PEMs, 0 when it must be made, -1 with err. */
static int devca_the_leaf(const char *dir, const char *ca, const cert_names *names, char **cert, char **key, char *err,
                          size_t errlen) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/leaf.key", dir);
    int has_key = devca_private_key(path, err, errlen);
    if (has_key <= 0) return has_key;
    char ignored[256];
    *cert = devca_read(dir, "leaf.crt", ignored, sizeof ignored);
    *key = devca_read(dir, "leaf.key", ignored, sizeof ignored);
    if (*cert && *key && cert_leaf_fits(*cert, ca, names, DEVCA_RENEW_DAYS) && cert_pair_fits(*cert, *key, 0)) return 1;
    cert_pem_free(*cert);
    cert_pem_free(*key);
    *cert = *key = NULL;
    return 0;
}

int devca_ensure(const char *dir, const cert_names *names, char **cert_pem, char **key_pem, char **ca_pem, char *err,
                 size_t errlen) {
    char *ca_cert = NULL, *ca_key = NULL, lock_path[PATH_MAX];
    int rc = -1, lock = -1;
    *cert_pem = *key_pem = NULL;
    if (devca_private_dir(dir, err, errlen) < 0) goto out;
    /* Two servers starting at once make one CA. */
    snprintf(lock_path, sizeof lock_path, "%s/.lock", dir);
    if ((lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0 || flock(lock, LOCK_EX) < 0) {
        snprintf(err, errlen, "cannot lock \"%s\": %s", lock_path, strerror(errno));
        goto out;
    }
    if (devca_the_ca(dir, &ca_cert, &ca_key, err, errlen) < 0) goto out;
    int fits = devca_the_leaf(dir, ca_cert, names, cert_pem, key_pem, err, errlen);
    if (fits < 0) goto out;
    if (!fits) {
        if (cert_make_leaf(ca_cert, ca_key, names, DEVCA_LEAF_DAYS, cert_pem, key_pem, err, errlen) < 0 ||
            devca_write(dir, "leaf.key", *key_pem, 0600, err, errlen) < 0 ||
            devca_write(dir, "leaf.crt", *cert_pem, 0644, err, errlen) < 0)
            goto out;
        char list[1024] = "";
        for (size_t i = 0, o = 0; i < names->n && o < sizeof list; i++)
            o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "", names->v[i]);
        log_msg(LOG_INFO, "made a development certificate for %s", list);
    }
    if (ca_pem) {
        *ca_pem = ca_cert;
        ca_cert = NULL;
    }
    rc = 0;
out:
    if (rc < 0) {
        cert_pem_free(*cert_pem);
        cert_pem_free(*key_pem);
        *cert_pem = *key_pem = NULL;
    }
    if (lock >= 0) close(lock); /* and its lock with it */
    cert_pem_free(ca_cert);
    cert_pem_free(ca_key);
    return rc;
}

int devca_tls_for(const tokend_config *cfg, devca_tls *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    if (cfg->tls_cert && *cfg->tls_cert)
        return cert_read_pair(cfg->tls_cert, cfg->tls_key ? cfg->tls_key : "", &out->cert_pem, &out->key_pem,
                              &out->expired, err, errlen);
    if (!cfg->dev) return 0;
    char dir[PATH_MAX];
    cert_names *names = malloc(sizeof *names);
    int rc = -1;
    if (!names) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    devca_names(cfg->allowed_hosts, names);
    if (devca_dir(dir, sizeof dir, err, errlen) == 0)
        rc = devca_ensure(dir, names, &out->cert_pem, &out->key_pem, &out->ca_pem, err, errlen);
    free(names);
    return rc;
}

void devca_tls_free(devca_tls *t) {
    cert_pem_free(t->cert_pem);
    cert_pem_free(t->key_pem);
    cert_pem_free(t->ca_pem);
    memset(t, 0, sizeof *t);
}
