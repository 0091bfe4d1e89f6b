/* The C connection engine: one AMQP 1.0 connection with failover, run by a native
 * I/O thread on Proton's connection driver (our own poll() loop over the socket).
 *
 * Threading. The I/O thread never touches a Python object and never needs the GIL.
 * Python threads talk to it through a command queue (woken with an eventfd) and
 * read results from the shared objects below, all guarded by one mutex per engine,
 * io->lock. Nothing blocks while holding io->lock. Waiting is done either on the
 * object's condition variable (fa_wait, called with the GIL released) or, in a
 * process monkey-patched by eventlet, on a Python event set by the dispatcher thread,
 * which reads FA_EV_WAKE events from a pipe that green threads can select() on.
 *
 * Ownership. Every shared object (op, call, sub, rec) is reference counted; the
 * Python wrapper holds one reference and the I/O thread one while it uses the object.
 * The last fa_*_unref frees it. Strings handed in are copied.
 */
#ifndef FASTAMQP_FA_IO_H
#define FASTAMQP_FA_IO_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

typedef struct fa_io fa_io;
typedef struct fa_op fa_op;
typedef struct fa_call fa_call;
typedef struct fa_sub fa_sub;
typedef struct fa_rec fa_rec;

typedef struct {
    const char *hostname;
    int port;
    const char *user;          /* NULL: none */
    const char *password;
    const char *mechs;         /* SASL mechanisms allowed; NULL: Proton's default */
    const char *peer_name;     /* TLS: the name the certificate must carry */
} fa_host;

typedef struct {
    const char *container_id;
    const char *vhost;                 /* Open hostname, NULL: unset */
    const char *const *properties;     /* key, value, key, value ... (strings) */
    int nproperties;                   /* number of pairs */
    double idle_timeout;               /* seconds, 0: none */
    double retry_interval, retry_backoff, retry_interval_max, link_retry_delay;
    double sender_link_timeout;        /* idle sender links are detached; 0: never */
    int reply_credit;
    int trace;
    const char *sasl_config_dir, *sasl_config_name;
    int tls;
    const char *ca_file, *cert_file, *key_file, *key_password;
    int green;                         /* post FA_EV_WAKE for every change */
    int window;                        /* confirmed sends held per connection (>= 1) */
    const fa_host *hosts;
    int nhosts;
} fa_config;

/* Send outcomes and op states. */
enum { FA_PENDING = 0, FA_DONE = 1, FA_FAILED = 2 };
enum { FA_ACCEPTED = 1, FA_RELEASED = 2, FA_MODIFIED = 3, FA_REJECTED = 4 };
/* Why an op or call failed: the Python layer maps these onto exceptions. */
enum { FA_ERR_NONE = 0, FA_ERR_TIMEOUT, FA_ERR_NO_CREDIT, FA_ERR_SEND_FAILURE,
       FA_ERR_CLOSED, FA_ERR_LOST, FA_ERR_WINDOW };

/* How a send is made (fa_op_new flags).
 *
 * FA_SEND_CONFIRM: an unsettled send whose caller does not wait for the outcome. The
 * caller is released once the message is taken: on the wire (or on a link with
 * credit for it) and counted in the connection's window. From then on the I/O thread
 * owns it until the peer settles it: accepted, it is forgotten; released, or
 * modified without undeliverable-here, it goes again after a short, growing pause while its deadline allows;
 * rejected (or modified undeliverable-here), it is logged and counted; in doubt at a
 * connection loss, it goes again on the next connection before newer sends. While
 * the window is full the send behaves as a plain unsettled one: the caller waits for
 * its outcome, or for room, whichever comes first.
 *
 * FA_SEND_FANOUT: the address is a multicast one. A router gives a multicast link no
 * credit while nobody subscribes; a fanout nobody listens to is not an error (the
 * original driver and the rabbit driver drop it), so a fanout waiting for credit on a
 * link that has never had any is dropped and counted after FA_FANOUT_CREDIT_WAIT. */
enum { FA_SEND_CONFIRM = 1, FA_SEND_FANOUT = 2 };

/* Policies shared with the pure-Python engine (fastamqp/engine/policy.py; a test checks
 * that the two agree). A released message never reached a consumer, so it goes again
 * after FIRST, then twice the last pause, at most MAX (and at most link_retry_delay
 * when that is longer than FIRST), for as long as its deadline allows. */
#define FA_RELEASED_PAUSE_FIRST 0.05
#define FA_RELEASED_PAUSE_MAX 1.0
#define FA_FANOUT_CREDIT_WAIT 1.0
/* After losing an established connection: one attempt at once, then one every
 * retry_interval for this long, then the configured back-off. */
#define FA_RECONNECT_STEADY 10.0

/* What the connection did with confirmed and fanout sends since it was made. */
typedef struct {
    long held;                 /* taken, not yet settled (the window in use) */
    long window;
    long waiting_for_room;     /* on the wire, their callers waiting for room */
    long settled;              /* confirmed sends the peer accepted */
    long resent_released;      /* sent again after released / modified */
    long resent_after_loss;    /* sent again on a new connection */
    long possibly_duplicated;  /* of those, on the wire when the connection was lost */
    long rejected;             /* rejected or modified undeliverable-here: logged */
    long given_up;             /* released until their deadline, retries spent, or
                                * left at close: logged */
    long fanout_dropped;       /* fanout with no receiver (no credit ever) */
} fa_stats;

typedef struct {
    int state;                 /* FA_PENDING / FA_DONE / FA_FAILED */
    int outcome;               /* FA_ACCEPTED ... when DONE */
    int delivery_failed, undeliverable_here;
    int error;                 /* FA_ERR_* when FAILED */
    char text[512];            /* condition "name\ndescription", or the error text */
} fa_result;

/* Control-plane events for the Python dispatcher. */
enum { FA_EV_OPENED = 1, FA_EV_ACTIVE, FA_EV_REPLY_READY, FA_EV_LOST,
       FA_EV_CONFIG_FAILED, FA_EV_STOPPED, FA_EV_WAKE, FA_EV_LOG };
/* FA_EV_LOG levels: Python's logging levels, so the dispatcher passes them through. */
enum { FA_LOG_DEBUG = 10, FA_LOG_INFO = 20, FA_LOG_WARNING = 30, FA_LOG_ERROR = 40 };

typedef struct fa_event {
    int kind;
    uint64_t generation;
    int host;                  /* index into the hosts */
    uint64_t wake_id;          /* FA_EV_WAKE: which object changed */
    int remote_closed;         /* FA_EV_LOST: the peer sent Close */
    int sasl_outcome;          /* pn_sasl_outcome_t, or -1 */
    int level;                 /* FA_EV_LOG: FA_LOG_* */
    char *text;                /* reason, or the peer's container id (OPENED) */
    char *cond_name, *cond_desc;
    char *mech;                /* the SASL mechanism used (OPENED, LOST) */
    char *tls_subject, *tls_protocol, *tls_cipher;   /* OPENED over TLS */
    char **props;              /* OPENED: the peer's properties, key/value strings */
    int nprops;
    struct fa_event *next;
} fa_event;

/* Live object counts, for leak tests. */
enum { FA_LIVE_ENGINE, FA_LIVE_OP, FA_LIVE_CALL, FA_LIVE_SUB, FA_LIVE_REC, FA_LIVE_EVENT,
       FA_LIVE_KINDS };
long fa_live(int kind);

/* engine */
fa_io *fa_io_new(const fa_config *cfg, char *err, size_t errlen);
int fa_io_start(fa_io *io);
int fa_io_event_fd(fa_io *io);                 /* read end of the dispatcher pipe */
fa_event *fa_io_take_events(fa_io *io);        /* detach the pending list */
void fa_event_free(fa_event *ev);
void fa_io_activate(fa_io *io, uint64_t generation, const char *reply_address);
/* Begin an orderly close: first wait up to drain seconds for the confirmed sends
 * the connection holds to be settled (the rest is logged), then close. */
void fa_io_close(fa_io *io, double drain);
void fa_io_stats(fa_io *io, fa_stats *out);
void fa_io_abort(fa_io *io);                   /* close now, not waiting for the peer */
int fa_io_join(fa_io *io, double timeout);     /* 0 when the thread has ended */
void fa_io_free(fa_io *io);                    /* after join */
int fa_io_active(fa_io *io);
uint64_t fa_io_status(fa_io *io, char **reply_address);  /* seq; strdup'd address */
uint64_t fa_io_wait_status(fa_io *io, uint64_t seen, double deadline);
uint64_t fa_io_next_id(fa_io *io);
double fa_monotonic(void);

/* Out of memory, the *_new calls return NULL and the int-returning ones below -1:
 * the wrappers raise MemoryError. */

/* sends */
fa_op *fa_op_new(fa_io *io, const char *address, const char *payload, size_t size,
                 int presettled, double deadline, int retry, int in_doubt_resend,
                 int flags);                      /* FA_SEND_* */
void fa_io_send(fa_io *io, fa_op *op);
uint64_t fa_op_id(fa_op *op);
uint64_t fa_op_result(fa_io *io, fa_op *op, fa_result *out);   /* returns seq */
uint64_t fa_op_wait(fa_io *io, fa_op *op, uint64_t seen, double deadline);
void fa_op_abandon(fa_io *io, fa_op *op, int error, const char *text);
void fa_op_unref(fa_op *op);

/* calls (reply correlation) */
fa_call *fa_call_new(fa_io *io, const char *message_id);       /* registered */
uint64_t fa_call_id(fa_call *call);
/* state: FA_PENDING, FA_DONE (reply), FA_FAILED; *beats: heartbeats so far */
uint64_t fa_call_state(fa_io *io, fa_call *call, int *state, uint64_t *beats,
                       int *error, char *text, size_t textlen);
uint64_t fa_call_wait(fa_io *io, fa_call *call, uint64_t seen, double deadline);
char *fa_call_take_reply(fa_io *io, fa_call *call, size_t *size);  /* malloc'd */
void fa_call_cancel(fa_io *io, fa_call *call);
void fa_call_unref(fa_call *call);

/* subscriptions */
fa_sub *fa_sub_new(fa_io *io, int credit);
/* Each entry is an address, or a shared subscription written as
 *   address US link-name US capabilities
 * (US: FA_SOURCE_SEP; capabilities space separated). A shared subscription's
 * receiver link carries that name and those source capabilities and asks that its
 * source never expire: qpidd keeps one subscription queue per link name for every
 * link with the "shared" capability (see fastamqp.engine.interface.Source). */
#define FA_SOURCE_SEP '\x1f'
int fa_sub_set_addresses(fa_io *io, fa_sub *sub, const char *const *addresses, int n);
int fa_io_subscribe(fa_io *io, fa_sub *sub);
uint64_t fa_sub_id(fa_sub *sub);
/* Up to max records; returns how many were taken; *seq for fa_sub_wait; *stopped. */
int fa_sub_take(fa_io *io, fa_sub *sub, fa_rec **out, int max, uint64_t *seq,
                int *stopped);
uint64_t fa_sub_wait(fa_io *io, fa_sub *sub, uint64_t seen, double deadline);
void fa_sub_stop(fa_io *io, fa_sub *sub);
int fa_io_unsubscribe(fa_io *io, fa_sub *sub);
void fa_sub_unref(fa_sub *sub);

const char *fa_rec_payload(fa_rec *rec, size_t *size);
const char *fa_rec_address(fa_rec *rec);
void fa_io_settle(fa_io *io, fa_rec *rec, int outcome);   /* takes the record */
void fa_rec_free(fa_rec *rec);

#endif
