/* linit.c: the `tokend` Lua module: the list of its parts. A new part is one file and one line here. */
#include "linit.h"
#include "llib.h"

#define LINIT_LIBS(X) \
    X(lroutelib_open)  /* route, static, before */ \
    X(ltokenlib_open)  /* generate_temp_token */ \
    X(lpolicylib_open) /* limiter, origins */ \
    X(lopslib_open)    /* log, config, metrics, stats, version */ \
    X(lcryptolib_open) /* crypto */ \
    X(lhttplib_open)   /* http */ \
    X(lsharedlib_open) /* shared */ \
    X(ltimerlib_open)  /* timer */ \
    X(lcookielib_open) /* cookie */ \
    X(ljwtlib_open)    /* jwt */ \
    X(lredislib_open)  /* redis */ \
    X(lpoollib_open)   /* pool */ \
    X(lsecretlib_open) /* secret */ \
    X(lproxylib_open)  /* proxy */ \
    X(lrelaylib_open)  /* relay */

#define LINIT_DECLARE(open) llib_open_fn open;
LINIT_LIBS(LINIT_DECLARE)

int linit_push_module(lua_State *L, lhost *h) {
#define LINIT_ENTRY(open) open,
    static llib_open_fn *const libs[] = { LINIT_LIBS(LINIT_ENTRY) };
    lua_newtable(L);
    for (size_t i = 0; i < sizeof libs / sizeof libs[0]; i++) libs[i](L, h);
    return 1;
}
