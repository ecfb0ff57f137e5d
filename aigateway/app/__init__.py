"""
twistd glue: the plugin's service, listeners, reloads, drain, admin, the config watch.
"""
