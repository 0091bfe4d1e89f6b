# cython: language_level=3, boundscheck=False, wraparound=False
"""The C I/O layer (fastamqp.engine.iolayer) over the native I/O thread of
engine/c/fa_io.c.

Thin on purpose: each object here owns one reference to a C object and releases it in
``__dealloc__``; waits drop the GIL. The connection logic that needs Python (addresses
computed from the peer, errors, eventlet) is the connection front,
fastamqp/engine/front.py.
"""
cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport strlen
from posix.unistd cimport getpid


cdef extern from "fa_io.h" nogil:
    ctypedef struct fa_io:
        pass
    ctypedef struct fa_op:
        pass
    ctypedef struct fa_call:
        pass
    ctypedef struct fa_sub:
        pass
    ctypedef struct fa_rec:
        pass
    ctypedef struct fa_host:
        const char *hostname
        int port
        const char *user
        const char *password
        const char *mechs
        const char *peer_name
    ctypedef struct fa_config:
        const char *container_id
        const char *vhost
        const char *const *properties
        int nproperties
        double idle_timeout, retry_interval, retry_backoff, retry_interval_max
        double link_retry_delay
        double sender_link_timeout
        int reply_credit
        int trace
        const char *sasl_config_dir
        const char *sasl_config_name
        int tls
        const char *ca_file
        const char *cert_file
        const char *key_file
        const char *key_password
        int green
        int window
        const fa_host *hosts
        int nhosts
    ctypedef struct fa_result:
        int state
        int outcome
        int delivery_failed, undeliverable_here
        int error
        char text[512]
    ctypedef struct fa_event:
        int kind
        uint64_t generation
        int host
        uint64_t wake_id
        int remote_closed
        int sasl_outcome
        int level
        char *text
        char *cond_name
        char *cond_desc
        char *mech
        char *tls_subject
        char *tls_protocol
        char *tls_cipher
        char **props
        int nprops
        fa_event *next

    enum:
        FA_PENDING, FA_DONE, FA_FAILED
        FA_ACCEPTED, FA_RELEASED, FA_MODIFIED, FA_REJECTED
        FA_EV_OPENED, FA_EV_ACTIVE, FA_EV_REPLY_READY, FA_EV_LOST, FA_EV_CONFIG_FAILED
        FA_EV_STOPPED, FA_EV_WAKE, FA_EV_LOG
        FA_ERR_NONE, FA_ERR_TIMEOUT, FA_ERR_NO_CREDIT, FA_ERR_SEND_FAILURE
        FA_ERR_CLOSED, FA_ERR_LOST, FA_ERR_WINDOW
        FA_SEND_CONFIRM, FA_SEND_FANOUT
    double FA_RELEASED_PAUSE_FIRST, FA_RELEASED_PAUSE_MAX, FA_FANOUT_CREDIT_WAIT
    double FA_RECONNECT_STEADY
    char FA_SOURCE_SEP
    ctypedef struct fa_stats:
        long held, window, waiting_for_room, settled, resent_released
        long resent_after_loss, possibly_duplicated, rejected, given_up, fanout_dropped

    fa_io *fa_io_new(const fa_config *cfg, char *err, size_t errlen)
    int fa_io_start(fa_io *io)
    int fa_io_event_fd(fa_io *io)
    fa_event *fa_io_take_events(fa_io *io)
    void fa_event_free(fa_event *ev)
    void fa_io_activate(fa_io *io, uint64_t generation, const char *reply_address)
    void fa_io_close(fa_io *io, double drain)
    void fa_io_stats(fa_io *io, fa_stats *out)
    void fa_io_abort(fa_io *io)
    int fa_io_join(fa_io *io, double timeout)
    void fa_io_free(fa_io *io)
    int fa_io_active(fa_io *io)

    fa_op *fa_op_new(fa_io *io, const char *address, const char *payload, size_t size,
                     int presettled, double deadline, int retry, int in_doubt_resend,
                     int flags)
    void fa_io_send(fa_io *io, fa_op *op)
    uint64_t fa_op_id(fa_op *op)
    uint64_t fa_op_result(fa_io *io, fa_op *op, fa_result *out)
    uint64_t fa_op_wait(fa_io *io, fa_op *op, uint64_t seen, double deadline)
    void fa_op_abandon(fa_io *io, fa_op *op, int error, const char *text)
    void fa_op_unref(fa_op *op)

    fa_call *fa_call_new(fa_io *io, const char *message_id)
    uint64_t fa_call_id(fa_call *call)
    uint64_t fa_call_state(fa_io *io, fa_call *call, int *state, uint64_t *beats,
                           int *error, char *text, size_t textlen)
    uint64_t fa_call_wait(fa_io *io, fa_call *call, uint64_t seen, double deadline)
    char *fa_call_take_reply(fa_io *io, fa_call *call, size_t *size)
    void fa_call_cancel(fa_io *io, fa_call *call)
    void fa_call_unref(fa_call *call)

    fa_sub *fa_sub_new(fa_io *io, int credit)
    int fa_sub_set_addresses(fa_io *io, fa_sub *sub, const char *const *addresses, int n)
    int fa_io_subscribe(fa_io *io, fa_sub *sub)
    uint64_t fa_sub_id(fa_sub *sub)
    int fa_sub_take(fa_io *io, fa_sub *sub, fa_rec **out, int max, uint64_t *seq,
                    int *stopped)
    uint64_t fa_sub_wait(fa_io *io, fa_sub *sub, uint64_t seen, double deadline)
    void fa_sub_stop(fa_io *io, fa_sub *sub)
    int fa_io_unsubscribe(fa_io *io, fa_sub *sub)
    void fa_sub_unref(fa_sub *sub)

    enum:
        FA_LIVE_ENGINE, FA_LIVE_OP, FA_LIVE_CALL, FA_LIVE_SUB, FA_LIVE_REC, FA_LIVE_EVENT
    long fa_live(int kind)

    const char *fa_rec_payload(fa_rec *rec, size_t *size)
    const char *fa_rec_address(fa_rec *rec)
    void fa_io_settle(fa_io *io, fa_rec *rec, int outcome)
    void fa_rec_free(fa_rec *rec)


# The constants of fastamqp.engine.iolayer.TABLE, as fa_io.h has them (a test checks
# that they agree).
PENDING, DONE, FAILED = FA_PENDING, FA_DONE, FA_FAILED
ACCEPTED, RELEASED, MODIFIED, REJECTED = FA_ACCEPTED, FA_RELEASED, FA_MODIFIED, FA_REJECTED
EV_OPENED, EV_ACTIVE, EV_REPLY_READY, EV_LOST = (FA_EV_OPENED, FA_EV_ACTIVE,
                                                 FA_EV_REPLY_READY, FA_EV_LOST)
EV_CONFIG_FAILED, EV_STOPPED, EV_WAKE = FA_EV_CONFIG_FAILED, FA_EV_STOPPED, FA_EV_WAKE
EV_LOG = FA_EV_LOG
ERR_NONE, ERR_TIMEOUT, ERR_NO_CREDIT, ERR_SEND_FAILURE = (
    FA_ERR_NONE, FA_ERR_TIMEOUT, FA_ERR_NO_CREDIT, FA_ERR_SEND_FAILURE)
ERR_CLOSED, ERR_LOST, ERR_WINDOW = FA_ERR_CLOSED, FA_ERR_LOST, FA_ERR_WINDOW
SEND_CONFIRM, SEND_FANOUT = FA_SEND_CONFIRM, FA_SEND_FANOUT
SOURCE_SEP = chr(FA_SOURCE_SEP)
# A wait here blocks the OS thread (GIL released): under eventlet the front asks for
# FA_EV_WAKE events and waits on green Events instead.
GREEN_WAITS = False
# The I/O thread's policies (fa_io.h), for the test that checks fastamqp.engine.policy.
POLICY = {"RELEASED_PAUSE_FIRST": FA_RELEASED_PAUSE_FIRST,
          "RELEASED_PAUSE_MAX": FA_RELEASED_PAUSE_MAX,
          "FANOUT_CREDIT_WAIT": FA_FANOUT_CREDIT_WAIT,
          "RECONNECT_STEADY": FA_RECONNECT_STEADY}


def live_objects():
    """How many C objects of each kind exist right now (the leak tests compare)."""
    return {"engines": fa_live(FA_LIVE_ENGINE), "sends": fa_live(FA_LIVE_OP),
            "calls": fa_live(FA_LIVE_CALL), "subscriptions": fa_live(FA_LIVE_SUB),
            "deliveries": fa_live(FA_LIVE_REC), "events": fa_live(FA_LIVE_EVENT)}


cdef bytes _b(s):
    return s.encode("utf-8") if s is not None else None


cdef const char *_p(bytes b):
    return <const char *>b if b is not None else NULL


cdef str _s(const char *p):
    return p.decode("utf-8", "replace") if p != NULL else None


cdef class Engine:
    """One fa_io: the C connection and its I/O thread."""

    cdef fa_io *io
    cdef bint started
    cdef int pid

    def __cinit__(self, dict config, list hosts):
        cdef fa_config cfg
        cdef fa_host *chosts = NULL
        cdef const char **props = NULL
        cdef char err[300]
        cdef int i
        keep = []                      # the bytes the C strings point into
        def b(value):
            encoded = _b(value)
            keep.append(encoded)
            return encoded
        properties = list(config.get("properties", ()))
        try:
            chosts = <fa_host *>calloc(len(hosts) or 1, sizeof(fa_host))
            props = <const char **>calloc(2 * len(properties) + 1, sizeof(char *))
            for i, (hostname, port, user, password, mechs, peer_name) in enumerate(hosts):
                chosts[i].hostname = _p(b(hostname))
                chosts[i].port = port
                chosts[i].user = _p(b(user))
                chosts[i].password = _p(b(password))
                chosts[i].mechs = _p(b(mechs))
                chosts[i].peer_name = _p(b(peer_name))
            for i, (key, value) in enumerate(properties):
                props[2 * i] = _p(b(key))
                props[2 * i + 1] = _p(b(value))
            cfg.container_id = _p(b(config["container_id"]))
            cfg.vhost = _p(b(config.get("vhost")))
            cfg.properties = props
            cfg.nproperties = len(properties)
            cfg.idle_timeout = config.get("idle_timeout", 0)
            cfg.retry_interval = config.get("retry_interval", 1)
            cfg.retry_backoff = config.get("retry_backoff", 2)
            cfg.retry_interval_max = config.get("retry_interval_max", 30)
            cfg.link_retry_delay = config.get("link_retry_delay", 10)
            cfg.sender_link_timeout = config.get("sender_link_timeout", 600)
            cfg.reply_credit = config.get("reply_credit", 200)
            cfg.trace = config.get("trace", False)
            cfg.sasl_config_dir = _p(b(config.get("sasl_config_dir")))
            cfg.sasl_config_name = _p(b(config.get("sasl_config_name")))
            cfg.tls = config.get("tls", False)
            cfg.ca_file = _p(b(config.get("ca_file")))
            cfg.cert_file = _p(b(config.get("cert_file")))
            cfg.key_file = _p(b(config.get("key_file")))
            cfg.key_password = _p(b(config.get("key_password")))
            cfg.green = config.get("green", False)
            cfg.window = config.get("window", 1000)
            cfg.hosts = chosts
            cfg.nhosts = len(hosts)
            self.io = fa_io_new(&cfg, err, sizeof(err))
        finally:
            free(chosts)
            free(props)
        if self.io == NULL:
            raise OSError(_s(err))
        self.pid = getpid()

    cdef bint forked(self):
        """In a forked child the I/O thread does not exist and io->lock may have been
        copied while held: the child must not touch the engine at all."""
        return getpid() != self.pid

    def start(self):
        if fa_io_start(self.io) != 0:
            raise OSError("cannot start the I/O thread")
        self.started = True

    def event_fd(self):
        return fa_io_event_fd(self.io)

    def take_events(self):
        """The control-plane events since the last call, oldest first, as tuples
        (kind, generation, host, wake_id, remote_closed, sasl_outcome, text,
        cond_name, cond_desc, mech, properties, tls, level) where tls is None or
        (subject, protocol, cipher) and level is the logging level of EV_LOG."""
        cdef fa_event *head = fa_io_take_events(self.io)
        cdef fa_event *ev = head
        cdef int i
        out = []
        try:
            while ev != NULL:
                props = {}
                for i in range(ev.nprops):
                    props[_s(ev.props[2 * i])] = _s(ev.props[2 * i + 1])
                tls = None
                if ev.tls_subject != NULL or ev.tls_protocol != NULL:
                    tls = (_s(ev.tls_subject), _s(ev.tls_protocol), _s(ev.tls_cipher))
                out.append((ev.kind, ev.generation, ev.host, ev.wake_id,
                            bool(ev.remote_closed), ev.sasl_outcome, _s(ev.text),
                            _s(ev.cond_name), _s(ev.cond_desc), _s(ev.mech), props, tls,
                            ev.level))
                ev = ev.next
        finally:
            fa_event_free(head)
        return out

    def activate(self, uint64_t generation, reply_address):
        encoded = _b(reply_address)
        fa_io_activate(self.io, generation, _p(encoded))

    def close(self, double drain=0):
        fa_io_close(self.io, drain)

    def stats(self):
        cdef fa_stats st
        fa_io_stats(self.io, &st)
        return {"held": st.held, "window": st.window,
                "waiting_for_room": st.waiting_for_room, "settled": st.settled,
                "resent_released": st.resent_released,
                "resent_after_loss": st.resent_after_loss,
                "possibly_duplicated": st.possibly_duplicated, "rejected": st.rejected,
                "given_up": st.given_up, "fanout_dropped": st.fanout_dropped}

    def join(self, double timeout):
        cdef int rc
        if not self.started:
            return True
        with nogil:
            rc = fa_io_join(self.io, timeout)
        if rc == 0:
            self.started = False
        return rc == 0

    @property
    def active(self):
        return bool(fa_io_active(self.io))

    def send(self, str address, bytes payload, bint presettled, double deadline,
             int retry, bint in_doubt_resend=True, int flags=0):
        cdef Op op = Op.__new__(Op)
        encoded = address.encode("utf-8")
        op.engine = self
        op.op = fa_op_new(self.io, encoded, payload, len(payload), presettled, deadline,
                          retry, in_doubt_resend, flags)
        if op.op == NULL:
            raise MemoryError()
        fa_io_send(self.io, op.op)
        return op

    def call(self, str message_id):
        cdef Call call = Call.__new__(Call)
        encoded = message_id.encode("utf-8")
        call.engine = self
        call.call = fa_call_new(self.io, encoded)
        if call.call == NULL:
            raise MemoryError()
        return call

    def subscription(self, int credit):
        cdef Sub sub = Sub.__new__(Sub)
        sub.engine = self
        sub.sub = fa_sub_new(self.io, credit)
        if sub.sub == NULL:
            raise MemoryError()
        return sub

    def __dealloc__(self):
        cdef int rc = 0
        if self.io == NULL or self.forked():
            return   # a forked child leaks its copy rather than risk a deadlock
        if self.started:
            # Collected without close(): do not wait for the peer's Close (under
            # eventlet the peer may be a green thread of this very process).
            fa_io_abort(self.io)
            with nogil:
                rc = fa_io_join(self.io, 5.0)
        if rc == 0:
            fa_io_free(self.io)
        # else: the thread is stuck; leaking is safer than freeing under it
        self.io = NULL


# no_gc_clear: when a reference cycle holding this object is collected, the cycle
# collector must not set ``engine`` to None before __dealloc__, which needs it.
@cython.no_gc_clear
cdef class Op:
    """One send, until it has a result."""

    cdef Engine engine
    cdef fa_op *op

    @property
    def id(self):
        return fa_op_id(self.op)

    def result(self):
        """(seq, state, outcome, delivery_failed, undeliverable_here, error, text)"""
        cdef fa_result res
        cdef uint64_t seq = fa_op_result(self.engine.io, self.op, &res)
        return (seq, res.state, res.outcome, bool(res.delivery_failed),
                bool(res.undeliverable_here), res.error,
                res.text[:strlen(res.text)].decode("utf-8", "replace"))

    def wait(self, uint64_t seen, double deadline):
        cdef uint64_t seq
        with nogil:
            seq = fa_op_wait(self.engine.io, self.op, seen, deadline)
        return seq

    def abandon(self, int error, str text):
        encoded = text.encode("utf-8")
        fa_op_abandon(self.engine.io, self.op, error, encoded)

    def __dealloc__(self):
        if self.op != NULL:
            fa_op_unref(self.op)


# no_gc_clear: when a reference cycle holding this object is collected, the cycle
# collector must not set ``engine`` to None before __dealloc__, which needs it.
@cython.no_gc_clear
cdef class Call:
    """A registered reply correlation: the I/O thread matches replies to it."""

    cdef Engine engine
    cdef fa_call *call

    @property
    def id(self):
        return fa_call_id(self.call)

    def state(self):
        """(seq, state, heartbeats, error, text)"""
        cdef int state, error
        cdef uint64_t beats
        cdef char text[256]
        cdef uint64_t seq = fa_call_state(self.engine.io, self.call, &state, &beats,
                                          &error, text, sizeof(text))
        return seq, state, beats, error, text[:strlen(text)].decode("utf-8", "replace")

    def wait(self, uint64_t seen, double deadline):
        cdef uint64_t seq
        with nogil:
            seq = fa_call_wait(self.engine.io, self.call, seen, deadline)
        return seq

    def take_reply(self):
        cdef size_t size = 0
        cdef char *reply = fa_call_take_reply(self.engine.io, self.call, &size)
        if reply == NULL:
            return None
        try:
            return PyBytes_FromStringAndSize(reply, size)
        finally:
            free(reply)

    def cancel(self):
        fa_call_cancel(self.engine.io, self.call)

    def __dealloc__(self):
        if self.call != NULL and not self.engine.forked():
            fa_call_cancel(self.engine.io, self.call)
            fa_call_unref(self.call)


# no_gc_clear: when a reference cycle holding this object is collected, the cycle
# collector must not set ``engine`` to None before __dealloc__, which needs it.
@cython.no_gc_clear
cdef class Sub:
    """Receiver links feeding one queue of records."""

    cdef Engine engine
    cdef fa_sub *sub

    @property
    def id(self):
        return fa_sub_id(self.sub)

    def set_addresses(self, addresses):
        cdef const char **ptrs = NULL
        cdef int i
        encoded = [a.encode("utf-8") for a in addresses]
        ptrs = <const char **>calloc(len(encoded) + 1, sizeof(char *))
        try:
            for i in range(len(encoded)):
                ptrs[i] = encoded[i]
            if fa_sub_set_addresses(self.engine.io, self.sub, ptrs, len(encoded)) != 0:
                raise MemoryError()
        finally:
            free(ptrs)

    def subscribe(self):
        if fa_io_subscribe(self.engine.io, self.sub) != 0:
            raise MemoryError()

    def take(self, int max_batch):
        """(records, seq, stopped); each record is (payload, address, token)."""
        cdef fa_rec *recs[64]
        cdef uint64_t seq
        cdef int stopped, n, i
        cdef size_t size
        cdef const char *payload
        cdef Token token
        out = []
        while True:
            n = fa_sub_take(self.engine.io, self.sub, recs, min(max_batch - len(out), 64),
                            &seq, &stopped)
            for i in range(n):
                token = Token.__new__(Token)
                token.engine = self.engine
                token.rec = recs[i]
                payload = fa_rec_payload(recs[i], &size)
                out.append((PyBytes_FromStringAndSize(payload, size),
                            fa_rec_address(recs[i]).decode("utf-8", "replace"), token))
            if n < 64 or len(out) >= max_batch:
                return out, seq, bool(stopped)

    def wait(self, uint64_t seen, double deadline):
        cdef uint64_t seq
        with nogil:
            seq = fa_sub_wait(self.engine.io, self.sub, seen, deadline)
        return seq

    def stop(self):
        fa_sub_stop(self.engine.io, self.sub)

    def unsubscribe(self):
        if fa_io_unsubscribe(self.engine.io, self.sub) != 0:
            raise MemoryError()

    def __dealloc__(self):
        if self.sub != NULL:
            fa_sub_unref(self.sub)


# no_gc_clear: when a reference cycle holding this object is collected, the cycle
# collector must not set ``engine`` to None before __dealloc__, which needs it.
@cython.no_gc_clear
cdef class Token:
    """A received delivery until it is settled (at most once)."""

    cdef Engine engine
    cdef fa_rec *rec

    def settle(self, int outcome):
        cdef fa_rec *rec = self.rec
        if rec == NULL:
            return False
        self.rec = NULL
        fa_io_settle(self.engine.io, rec, outcome)
        return True

    def __dealloc__(self):
        if self.rec != NULL:
            fa_rec_free(self.rec)   # never settled: the peer redelivers it elsewhere
