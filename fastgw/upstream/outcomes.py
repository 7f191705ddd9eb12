"""How an attempt on an upstream host ended: what the completion point is told.

Health checks, balancers and metrics read these; `ok` and `client_abort` say nothing bad
about the host, nor does `gateway_error` (the gateway itself ran out of file descriptors).
"""

OK = "ok"  # the response was relayed completely (or a tunnel closed)
CONNECT_ERROR = "connect_error"  # refused, unreachable, TLS handshake failed, connect timeout
TIMEOUT = "timeout"  # no progress for the upstream's read timeout
RESET = "reset"  # the upstream closed or reset the connection before the response ended
INVALID = "invalid"  # the response could not be parsed
CLIENT_ABORT = "client_abort"  # the client went away, or broke the protocol mid-body
GATEWAY_ERROR = "gateway_error"  # the gateway could not make the attempt (descriptors)
