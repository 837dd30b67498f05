/* devca.h: the development CA (mkcert's approach): made on first use in the user's data folder, kept private, its leaf remade when the machine's names change. */
#ifndef TOKEND_DEVCA_H
#define TOKEND_DEVCA_H

#include <stddef.h>

#include "cert.h"
#include "tokend.h"

/* The folder that holds the CA: $XDG_DATA_HOME/tokend, else $HOME/.local/share/tokend
 * (never the project's). Returns 0, or -1 with err when neither variable is set (a service
 * without a home, such as systemd's DynamicUser: --dev is for a developer's session). */
int devca_dir(char *out, size_t outlen, char *err, size_t errlen);

/* The machine's names on its networks: its addresses (IPv4 first, then IPv6 other than
 * link-local; no loopback) and <hostname>.local. */
void devca_network_names(cert_names *out);

/* The names of the development certificate: localhost, 127.0.0.1, ::1, the network names,
 * and the names of extra (TOKEND_ALLOWED_HOSTS: a comma list; "*" is left out). */
void devca_names(const char *extra, cert_names *out);

/* The CA and a leaf for names in dir, made when missing: the folder (0700) and the keys
 * (0600) must be the user's alone, and are refused otherwise with the chmod that fixes
 * them; the leaf is made again when the names differ from its own, it expires within 30
 * days or another CA signed it. Gives the leaf's PEMs (free with cert_pem_free) and,
 * when ca_pem is not NULL, the CA certificate. Returns 0, or -1 with err. */
int devca_ensure(const char *dir, const cert_names *names, char **cert_pem, char **key_pem, char **ca_pem, char *err,
                 size_t errlen);

/* What serves HTTPS for cfg: its certificate files, else (dev) the development CA's leaf
 * for devca_names(cfg->allowed_hosts). Leaves everything NULL when cfg serves no HTTPS.
 * Returns 0, or -1 with err (a file that cannot be read or does not match, a CA folder
 * that others may read, no data folder). */
typedef struct devca_tls {
    char *cert_pem, *key_pem; /* the server's certificate (chain) and key */
    char *ca_pem;             /* the development CA's certificate when it is in use, else NULL */
    int expired;              /* the certificate of the files is not valid now */
} devca_tls;

int devca_tls_for(const tokend_config *cfg, devca_tls *out, char *err, size_t errlen);

/* Frees what devca_tls_for gave (the key wiped). */
void devca_tls_free(devca_tls *t);

#endif
