# cython: language_level=3, boundscheck=False, wraparound=False
"""The Python face of "fastamqp relay" (csrc/fa_relay.c), the intermediary's C data path.

Thin on purpose: a RelayCore owns one fa_relay and frees it in ``__dealloc__``. The
relay's thread is pure C; nothing here runs on it, and stop() joins it without the GIL.
"""
from libc.stdint cimport uint64_t


cdef extern from "fa_relay.h" nogil:
    ctypedef struct fa_relay:
        pass
    int FA_RELAY_ROUTER
    int FA_RELAY_BROKER
    int FA_RC_COUNT
    fa_relay *fa_relay_new(int mode, const char *host, int port, const char *container_id,
                           const char *product, const char *version,
                           const char *router_id, int window)
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


cdef class RelayCore:
    cdef fa_relay *_r
    cdef readonly int port

    def __cinit__(self, str mode, str host, int port, str container_id, str product,
                  str version, str router_id, int window):
        if mode not in ("router", "broker"):
            raise ValueError("mode must be 'router' or 'broker'")
        b_host = host.encode()
        b_cid = container_id.encode()
        b_prod = product.encode()
        b_ver = version.encode()
        b_rid = router_id.encode()
        self._r = fa_relay_new(FA_RELAY_ROUTER if mode == "router" else FA_RELAY_BROKER,
                               b_host, port, b_cid, b_prod, b_ver, b_rid, window)
        if self._r == NULL:
            raise MemoryError()
        self.port = 0

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
