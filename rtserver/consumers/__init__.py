"""Asynchronous consumers: server API commands read from external queues (docs/consumers.rst).

A front door of the server API beside ``web/`` and ``grpcapi/``: each command runs
through the same :class:`~rtserver.api.executor.APIExecutor`.
"""
