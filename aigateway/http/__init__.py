"""
The upstream HTTP client.
"""
