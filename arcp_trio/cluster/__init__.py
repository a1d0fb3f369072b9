"""Several runtime nodes on one Redis (issue 16): the shared state and its plumbing.

Optional: needs the ``redis`` extra (``pip install 'arcp-trio[redis]'``, which brings
``coredis``). Nothing outside this package imports it.
"""
