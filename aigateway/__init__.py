"""
aigateway: an AI gateway on Twisted.
"""
