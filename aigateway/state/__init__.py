"""
Where rate-limit buckets live: this process's memory (L{memory}, the
default) or a Redis server shared by every gateway that names it
(L{redis}).
"""
