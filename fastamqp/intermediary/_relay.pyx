# cython: language_level=3, boundscheck=False, wraparound=False
"""The Python face of "fastamqp relay" (intermediary/fa_relay.c), the intermediary's C data path.

Thin on purpose: a RelayCore owns one fa_relay and frees it in ``__dealloc__``. The
relay's thread is pure C; nothing here runs on it, and stop() joins it without the GIL.
"""
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free


cdef extern from "fa_relay.h" nogil:
    ctypedef struct fa_relay:
        pass
    int FA_RELAY_ROUTER
    int FA_RELAY_BROKER
    int FA_RC_COUNT
    int FA_DIST_CLOSEST, FA_DIST_BALANCED, FA_DIST_MULTICAST, FA_DIST_QUEUE, FA_DIST_TOPIC
    ctypedef struct fa_relay_config:
        int mode
        const char *host
        int port
        const char *container_id
        const char *product
        const char *version
        const char *router_id
        int window
        const char *const *route_prefixes
        const int *route_dists
        int nroutes
        int default_dist
    fa_relay *fa_relay_new(const fa_relay_config *cfg)
    int fa_relay_distribution(fa_relay *r, const char *address)
    int fa_relay_start(fa_relay *r, char *err, size_t errlen)
    void fa_relay_counters(fa_relay *r, uint64_t *out)
    int fa_relay_alive(fa_relay *r)
    void fa_relay_stop(fa_relay *r)
    void fa_relay_free(fa_relay *r)


# The order of the FA_RC_* indices in fa_relay.h: routing.COUNTER_NAMES first
# (tests/test_relay.py checks that), then the connection and link counts and gauges.
COUNTER_NAMES = ("received", "forwarded", "accepted", "released", "modified", "rejected",
                 "dropped", "enqueued", "requeued", "acknowledged", "dropped_presettled",
                 "connections_total", "links_total", "connections", "links", "stored")


# routing.py's distribution names, as fa_relay.h numbers them.
DISTRIBUTIONS = {"closest": FA_DIST_CLOSEST, "balanced": FA_DIST_BALANCED,
                 "multicast": FA_DIST_MULTICAST, "queue": FA_DIST_QUEUE,
                 "topic": FA_DIST_TOPIC}
_DIST_NAMES = {v: k for k, v in DISTRIBUTIONS.items()}


cdef class RelayCore:
    cdef fa_relay *_r
    cdef readonly int port

    def __cinit__(self, str mode, str host, int port, str container_id, str product,
                  str version, str router_id, int window, routes, str default):
        """routes: (prefix, distribution) pairs in match order and default, as
        routing.AddressTable's entries and default (relay.py passes them)."""
        cdef fa_relay_config cfg
        cdef const char **prefixes = NULL
        cdef int *dists = NULL
        cdef int i
        if mode not in ("router", "broker"):
            raise ValueError("mode must be 'router' or 'broker'")
        if window < 1:
            raise ValueError("window must be at least 1")
        routes = list(routes)
        for prefix, dist in routes + [("", default)]:
            if dist not in DISTRIBUTIONS:
                raise ValueError("unknown distribution %r" % (dist,))
        b_host = host.encode()
        b_cid = container_id.encode()
        b_prod = product.encode()
        b_ver = version.encode()
        b_rid = router_id.encode()
        b_prefixes = [prefix.encode() for prefix, _ in routes]
        prefixes = <const char **>calloc(len(routes) + 1, sizeof(char *))
        dists = <int *>calloc(len(routes) + 1, sizeof(int))
        try:
            if prefixes == NULL or dists == NULL:
                raise MemoryError()
            for i in range(len(routes)):
                prefixes[i] = b_prefixes[i]
                dists[i] = DISTRIBUTIONS[routes[i][1]]
            cfg.mode = FA_RELAY_ROUTER if mode == "router" else FA_RELAY_BROKER
            cfg.host = b_host
            cfg.port = port
            cfg.container_id = b_cid
            cfg.product = b_prod
            cfg.version = b_ver
            cfg.router_id = b_rid
            cfg.window = window
            cfg.route_prefixes = prefixes
            cfg.route_dists = dists
            cfg.nroutes = len(routes)
            cfg.default_dist = DISTRIBUTIONS[default]
            self._r = fa_relay_new(&cfg)      # copies everything
        finally:
            free(prefixes)
            free(dists)
        if self._r == NULL:
            raise MemoryError()
        self.port = 0

    def distribution(self, str address):
        """The distribution the relay's table gives address (normalized as
        routing.normalize): what routing.AddressTable.lookup gives it."""
        return _DIST_NAMES[fa_relay_distribution(self._r, address.encode())]

    def start(self):
        """Bind, listen and start the relay thread; returns the bound port."""
        cdef char err[256]
        cdef int port
        err[0] = 0
        with nogil:
            port = fa_relay_start(self._r, err, sizeof(err))
        if port < 0:
            raise OSError("fastamqp relay: %s" % err.decode(errors="replace"))
        self.port = port
        return port

    def counters(self):
        cdef uint64_t out[32]
        assert FA_RC_COUNT <= 32
        fa_relay_counters(self._r, out)
        return {COUNTER_NAMES[i]: out[i] for i in range(FA_RC_COUNT)}

    def alive(self):
        """True while the relay thread serves (False once it gave up on poll())."""
        return self._r != NULL and fa_relay_alive(self._r) != 0

    def stop(self):
        """Stop the thread (joined) and close every socket; idempotent."""
        if self._r != NULL:
            with nogil:
                fa_relay_stop(self._r)

    def __dealloc__(self):
        if self._r != NULL:
            with nogil:
                fa_relay_free(self._r)
            self._r = NULL
