"""Policies both connection engines apply on their I/O threads, as data.

The C engine has them as constants in engine/c/fa_io.h (re-exported as
``fastamqp.engine.c._io.POLICY``); the pure-Python engine reads them here. A test checks that
the two agree, so a change to one that forgets the other fails the suite.
"""

# A message the peer released (or modified without delivery-failed or
# undeliverable-here) never reached a consumer: sending it again cannot duplicate it
# (REFERENCE §3.6). It goes again after RELEASED_PAUSE_FIRST seconds, then after twice
# the last pause, at most RELEASED_PAUSE_MAX (and at most link_retry_delay when that
# is longer than the first pause), for as long as its deadline allows. A router that
# releases requests while a route is down (a mesh neighbour restarting) is retried
# within a fraction of a second of the route's return, and a busy client does not
# turn a short flap into a storm of resends.
RELEASED_PAUSE_FIRST = 0.05
RELEASED_PAUSE_MAX = 1.0

# A router gives a multicast link no credit while nobody subscribes to the address.
# A fanout nobody listens to is not an error (the original driver and the rabbit
# driver drop it; ombt's controller pings kinds of clients that are not running), so
# a fanout waiting for credit on a link that has never had any is dropped and
# counted once the link has had this long to get credit.
FANOUT_CREDIT_WAIT = 1.0

# After losing a connection that had been up, the engine tries again at once, then
# every connection_retry_interval for this many seconds, and only then backs off as
# configured (multiplying by connection_retry_backoff up to
# connection_retry_interval_max). A router that restarts is found within
# retry_interval of its return, not a back-off step later; a peer that stays away
# is not hammered.
RECONNECT_STEADY = 10.0

# How many confirmed casts and notifications a connection holds until the peer
# settles them, unless [oslo_messaging_amqp] send_window says otherwise.
DEFAULT_SEND_WINDOW = 1000


def released_pause(attempt, link_retry_delay):
    """The pause before the resend number ``attempt`` (0 for the first) of a released
    message."""
    cap = RELEASED_PAUSE_MAX
    if RELEASED_PAUSE_FIRST < link_retry_delay < cap:
        cap = link_retry_delay
    return min(RELEASED_PAUSE_FIRST * (2 ** min(attempt, 30)), cap)
