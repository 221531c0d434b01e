"""The server API: one transport-neutral executor with a method per command.

``executor.APIExecutor`` runs commands against the node; ``schema`` validates request
fields. Transports (``rtserver.web.api`` for HTTP) only decode, authenticate and encode.
"""
