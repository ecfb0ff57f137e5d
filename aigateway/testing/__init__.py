"""
Fakes shipped for demos, tests and benchmarks: the fake LLM.
"""
