"""What fastamqp does on RabbitMQ besides addressing: declaring queues, exchanges and
bindings (declare), through RabbitMQ 4's management node (management)."""
