/* fa_relay: the C data path of fastamqp's embedded intermediary.
 *
 * One native thread owns a listening socket and every accepted connection
 * (pn_connection_driver + poll()); it routes like routing.py's RouterCore or BrokerCore.
 * No Python object is touched on that thread. The Python face is
 * fastamqp/intermediary/_relay.pyx.
 *
 * Limits (see docs/relay.md): plain TCP only, SASL ANONYMOUS only, no fault hooks.
 * The address table comes from routing.py (relay.py builds it): no copy of it here.
 */
#ifndef FA_RELAY_H
#define FA_RELAY_H

#include <stddef.h>
#include <stdint.h>

#define FA_RELAY_ROUTER 0
#define FA_RELAY_BROKER 1

/* Distributions: routing.CLOSEST ... routing.TOPIC (the router uses the first three,
 * the broker the last two). */
enum { FA_DIST_CLOSEST, FA_DIST_BALANCED, FA_DIST_MULTICAST, FA_DIST_QUEUE, FA_DIST_TOPIC };

typedef struct {
    int mode;                          /* FA_RELAY_ROUTER / FA_RELAY_BROKER */
    const char *host;
    int port;
    const char *container_id, *product, *version, *router_id;
    int window;                        /* routing.DEFAULT_WINDOW: qdrouterd's
                                        * linkCapacity (>= 1) */
    /* routing.AddressTable: prefixes in match order (the first that matches an
     * address on a token boundary wins), their distributions, and the default. */
    const char *const *route_prefixes;
    const int *route_dists;
    int nroutes;
    int default_dist;
} fa_relay_config;

/* Counter indices; names in the same order as COUNTER_NAMES in _relay.pyx (the
 * cumulative ones are routing.COUNTER_NAMES, in its order). */
enum {
    FA_RC_RECEIVED, FA_RC_FORWARDED, FA_RC_ACCEPTED, FA_RC_RELEASED, FA_RC_MODIFIED,
    FA_RC_REJECTED, FA_RC_DROPPED, FA_RC_ENQUEUED, FA_RC_REQUEUED, FA_RC_ACKNOWLEDGED,
    FA_RC_DROPPED_PRESETTLED, FA_RC_CONNECTIONS_TOTAL, FA_RC_LINKS_TOTAL,
    /* gauges */
    FA_RC_CONNECTIONS, FA_RC_LINKS, FA_RC_STORED,
    FA_RC_COUNT
};

typedef struct fa_relay fa_relay;

/* All strings are copied. Returns NULL on allocation failure (or window < 1). */
fa_relay *fa_relay_new(const fa_relay_config *cfg);
/* The distribution (FA_DIST_*) the table gives an address, as routing.AddressTable's
 * lookup of routing.normalize(address): what tests compare. Any thread. */
int fa_relay_distribution(fa_relay *r, const char *address);
/* Binds, listens and starts the thread. Returns the bound port, or -1 with a message
 * in err. */
int fa_relay_start(fa_relay *r, char *err, size_t errlen);
/* Snapshot of the counters (any thread). */
void fa_relay_counters(fa_relay *r, uint64_t out[FA_RC_COUNT]);
/* Stops the thread (joins it) and closes every socket; idempotent. */
/* 1 while the relay thread runs its loop; 0 before start, after stop, or once the
 * thread has given up (poll() failed: every connection is cut). */
int fa_relay_alive(fa_relay *r);
void fa_relay_stop(fa_relay *r);
/* Stops if needed and frees everything. */
void fa_relay_free(fa_relay *r);

#endif
