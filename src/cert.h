/* cert.h: certificates with OpenSSL: a key pair's files checked, a development CA and the leaves it signs. */
#ifndef TOKEND_CERT_H
#define TOKEND_CERT_H

#include <stddef.h>

#define CERT_MAX_NAMES 64 /* names one leaf certificate covers, at most */
#define CERT_NAME_LEN 256 /* a DNS name or an IP address, with its NUL */

/* The names a leaf covers: DNS names (a leading "*." for a wildcard) and IP addresses. */
typedef struct cert_names {
    size_t n;
    char v[CERT_MAX_NAMES][CERT_NAME_LEN];
} cert_names;

/* Adds name unless it is there already (compared without case). Returns 0, or -1 when
 * the list is full or the name too long. */
int cert_names_add(cert_names *names, const char *name);

/* Reads a certificate file (PEM, the server's certificate first, then its chain) and its
 * private key (PEM, not encrypted) and checks that they belong together. *cert_pem gets
 * the certificate file's text and *key_pem the key as PKCS#8 PEM (free both with
 * cert_pem_free). *expired is set when the certificate is not valid now (the caller warns).
 * Returns 0, or -1 with err naming the file at fault. */
int cert_read_pair(const char *cert_file, const char *key_file, char **cert_pem, char **key_pem, int *expired,
                   char *err, size_t errlen);

/* Makes a certificate authority (an EC P-256 key, ten years) named cn. Returns 0 with both
 * PEMs (free with cert_pem_free), or -1 with err. */
int cert_make_ca(const char *cn, char **cert_pem, char **key_pem, char *err, size_t errlen);

/* Makes a server certificate for names (the first also its common name), valid for days
 * (at most 397: browsers refuse longer), signed by the CA given in PEM. Returns 0 with both
 * PEMs, or -1 with err. */
int cert_make_leaf(const char *ca_cert_pem, const char *ca_key_pem, const cert_names *names, int days, char **cert_pem,
                   char **key_pem, char *err, size_t errlen);

/* 1 when the certificate cert_pem was signed by ca_cert_pem, covers exactly names (in any
 * order) and is valid for at least min_days more; 0 otherwise (or unreadable). */
int cert_leaf_fits(const char *cert_pem, const char *ca_cert_pem, const cert_names *names, int min_days);

/* 1 when the private key key_pem belongs to the certificate cert_pem (and, with ca set,
 * the certificate is a CA valid now); 0 otherwise. */
int cert_pair_fits(const char *cert_pem, const char *key_pem, int ca);

/* Writes the SHA-256 fingerprint of the first certificate of cert_pem ("AB:CD:...") into
 * out (room for 96 bytes) and its expiry date ("2035-05-01") into expires (room for 16).
 * Returns 0, or -1 when it cannot be read. */
int cert_describe(const char *cert_pem, char *out, char *expires);

/* Reads a whole PEM file of at most 1 MiB (NUL-terminated; free with cert_pem_free).
 * Returns it, or NULL with err naming the file. */
char *cert_read_file(const char *path, char *err, size_t errlen);

/* Wipes and frees a PEM text (a key's). NULL is allowed. */
void cert_pem_free(char *pem);

#endif
