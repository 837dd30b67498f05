/* netaddr.h: client IP addresses: parsing (IPv4-mapped IPv6 is IPv4), networks, keys, proxies. */
#ifndef TOKEND_NETADDR_H
#define TOKEND_NETADDR_H

#include <stddef.h>
#include <sys/socket.h>

#define NETADDR_TEXT 64 /* room for any address text tokend writes */

typedef struct netaddr {
    int family;              /* AF_INET or AF_INET6 */
    unsigned char bytes[16]; /* 4 used for AF_INET */
} netaddr;

/* Parses an IPv4 or IPv6 address text; an IPv4-mapped IPv6 address (::ffff:a.b.c.d)
 * becomes the IPv4 address. Returns 0, or -1 when the text is not an address. */
int netaddr_parse(const char *text, netaddr *out);

/* Writes the address as text ("a.b.c.d" or RFC 5952 IPv6) into out (NETADDR_TEXT bytes). */
void netaddr_format(const netaddr *a, char *out, size_t outlen);

/* Writes the text of a socket address (IPv4-mapped IPv6 as IPv4), or "-". */
void netaddr_of_sockaddr(const struct sockaddr *sa, char *out, size_t outlen);

/* Writes the key that rate limits and connection counts use for an address text: the
 * IPv4 address itself, the /64 network of an IPv6 address ("2001:db8:1:2::/64"), or the
 * text unchanged when it is not an address. */
void netaddr_key(const char *text, char *out, size_t outlen);

/* ---- networks: trusted proxies ---- */

typedef struct netaddr_nets netaddr_nets;

/* Parses "127.0.0.1, 10.0.0.0/8, ::1, fd00::/8" (commas or spaces); NULL or "" gives an
 * empty list. Returns 0, or -1 with err naming the bad entry. */
int netaddr_nets_parse(const char *spec, netaddr_nets **out, char *err, size_t errlen);
void netaddr_nets_free(netaddr_nets *n);

/* Returns 1 when the address text is inside one of the networks. */
int netaddr_nets_contain(const netaddr_nets *n, const char *text);

/* Writes the client's address into out: peer itself unless peer is a trusted proxy; then
 * the right-most address of the X-Forwarded-For values (nvalues header lines, in arrival
 * order, each a comma-separated list; a caller may pass only the last lines, where
 * proxies add theirs) that is not a trusted proxy, or the left-most when all are. An
 * empty or malformed item makes the header untrusted: the client is then the peer. */
void netaddr_client(const netaddr_nets *trusted, const char *peer, const char *const *values, size_t nvalues, char *out,
                    size_t outlen);

#endif
