"""
Provider adapters: how a route's request is rewritten for one kind of LLM API.
"""
