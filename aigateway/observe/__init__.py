"""
The request's record, metrics, the access log, tracing and OTLP export.
"""
