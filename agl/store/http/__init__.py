"""The store over HTTP: the ASGI application, OTLP ingest, the client transport and the shared wire constants.

Nothing here is imported by `import agl`; the server and client modules import these pieces when used.
"""
