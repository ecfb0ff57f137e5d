"""
JWT parsing and verification, key sets, the token helper.
"""
