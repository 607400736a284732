"""The HTTP edge: Connect (JSON and binary, unary and server-streaming), gRPC-Web and WebSocket
streams on one listener (hypercorn's trio worker), calling the same service objects as the gRPC
port (README.md, "Calling the daemon over HTTP")."""
