"""``difflens serve``: a local web page listing run directories and a live playground.

A combiner (it uses the engine and the KL and ADL methods; nothing imports it).  The web
library is the optional ``serve`` extra, imported only when the command runs.
"""
