"""
The request path, top to bottom: site, routes, guard, policy, relay, errors.
"""
