"""What the oslo.messaging-level tests share: transports made for a test and cleaned
up after it. Each module's ``transports`` fixture wraps this one generator (their
``conf`` fixtures differ: some register and override options)."""
import oslo_messaging


def transport_factory(conf):
    """Generator for a fixture: yields ``make(url, notification=False)``, which returns
    an RPC (or notification) transport on ``url``; every transport made is cleaned up
    when the fixture ends."""
    made = []

    def make(url, notification=False):
        factory = (oslo_messaging.get_notification_transport if notification
                   else oslo_messaging.get_rpc_transport)
        transport = factory(conf, url=url)
        made.append(transport)
        return transport
    yield make
    for transport in made:
        transport.cleanup()
