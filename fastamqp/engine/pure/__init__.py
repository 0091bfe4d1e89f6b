"""The pure-Python engine: the reference implementation the C engine must match.

It is built on python-qpid-proton (codec) and pyngus (connection engine), as the
original oslo.messaging driver was.
"""
