"""
Provider knowledge: path mapping, request bodies, streams, usage, backend credentials.
"""
